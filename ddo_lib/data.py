"""Datasets for the pipeline: digits, our prepared `.npz`, EDM dataset zips, the CIFAR-10 tarball, and
ImageNet-style image folders (or zips of them).

Every reader returns uint8 images [N, C, H, W] (square, power-of-two, C = 1 or 3) and int64 labels [N]
(−1 everywhere when unlabelled), validated at the boundary. Images are a torch tensor, except for image
folders: those stay on disk as a lazy `ImageFiles` array (`ddo_lib.image_files`) that decodes rows when
indexed; `select` / `take` / `concatenate` / `save_dataset` handle both, and a lazy split is saved as a
manifest (file names, no pixels). Nothing here executes code from a file: `.npz` loads with
allow_pickle=False, EDM zips are PNG + JSON, and the CIFAR-10 batches go through a restricted unpickler
(EDM `dataset_tool.py` reads them with plain pickle; we do not).
"""
from __future__ import annotations

import codecs
import dataclasses
import io
import json
import logging
import os
import pathlib
import pickle
import tarfile
import zipfile
from typing import Iterator

import einops
import numpy as np
import torch

from ddo_lib import image_files
from ddo_lib.checkpoint import atomic_write_bytes
from ddo_lib.image_files import ImageFiles

log = logging.getLogger(__name__)

ArrayLike = np.ndarray | torch.Tensor
Images = torch.Tensor | ImageFiles  # uint8 [N, C, H, W] in memory, or lazy on disk
CIFAR10_MEMBERS = {"train": [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)],
                   "test": ["cifar-10-batches-py/test_batch"]}
CIFAR10_BATCH_SIZE = 10_000  # images per official batch file


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A validated image data set: pixels in memory (tensor) or on disk (`ImageFiles`, decoded when indexed)."""

    images: Images        # uint8 [N, C, H, W]: torch.Tensor or lazy ImageFiles (C = 3)
    labels: torch.Tensor  # int64 [N], in [0, label_dim) or all -1
    label_dim: int        # number of classes; 0 = unconditional
    resolution: int       # H = W
    channels: int         # C
    name: str

    def __len__(self) -> int:
        return len(self.images)


# ----------------------------------------------------------------------------------------------------
# Validation.

def _numpy(array: ArrayLike) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


def validate_images(images: ArrayLike | ImageFiles, where: str = "images", *,
                    allow_empty: bool = False) -> np.ndarray | ImageFiles:
    """Check uint8 [N, C, H, W], H = W a power of two, C in {1, 3}, N >= 1 (0 with `allow_empty`: an
    empty held-out split); return the numpy view. `ImageFiles` are checked by their metadata only (never
    decoded) and returned as they are."""
    if isinstance(images, ImageFiles):
        _check_layout(tuple(images.shape), np.dtype(np.uint8), where, allow_empty)
        return images
    images = _numpy(images)
    _check_layout(images.shape, images.dtype, where, allow_empty)
    return images


def _check_layout(shape: tuple[int, ...], dtype: np.dtype, where: str, allow_empty: bool) -> None:
    if dtype != np.uint8:
        raise ValueError(f"{where}: expected dtype uint8, found {dtype}")
    if len(shape) != 4:
        raise ValueError(f"{where}: expected 4-D [N, C, H, W], found shape {shape}")
    n, c, h, w = shape
    if n == 0 and not allow_empty:
        raise ValueError(f"{where}: no images (shape {shape}); a data set needs at least one")
    if h != w or h < 1 or h & (h - 1):
        raise ValueError(f"{where}: expected square power-of-two images, found H x W = {h} x {w}")
    if c not in (1, 3):
        raise ValueError(f"{where}: expected 1 or 3 channels, found {c} (shape {shape})")


def validate_labels(labels: ArrayLike, n: int, label_dim: int, where: str = "labels") -> np.ndarray:
    """Check integer labels [n], all in [0, label_dim) or all −1; return them as int64 numpy."""
    labels = _numpy(labels)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{where}: expected an integer dtype, found {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"{where}: expected shape ({n},), found {labels.shape}")
    labels = labels.astype(np.int64)
    if n and not (labels == -1).all() and (labels.min() < 0 or labels.max() >= label_dim):
        raise ValueError(f"{where}: expected values in [0, {label_dim}) or all -1, "
                         f"found range [{labels.min()}, {labels.max()}]")
    return labels


def infer_label_dim(labels: ArrayLike) -> int:
    """max + 1 (EDM `dataset.py`), or 0 when there are no labels or all are −1."""
    labels = _numpy(labels)
    return int(labels.max()) + 1 if labels.size and labels.max() >= 0 else 0


def make_dataset(images: ArrayLike | ImageFiles, labels: ArrayLike | None, *, name: str,
                 label_dim: int | None = None, allow_empty: bool = False) -> Dataset:
    """Validate arrays and wrap them in a Dataset (labels None → unlabelled, −1). `ImageFiles` stay lazy."""
    images = validate_images(images, allow_empty=allow_empty)
    labels = np.full(len(images), -1, np.int64) if labels is None else labels
    label_dim = infer_label_dim(labels) if label_dim is None else int(label_dim)
    labels = validate_labels(labels, len(images), label_dim)
    stored = images if isinstance(images, ImageFiles) else torch.from_numpy(np.ascontiguousarray(images))
    return Dataset(images=stored, labels=torch.from_numpy(labels), label_dim=label_dim,
                   resolution=int(images.shape[-1]), channels=int(images.shape[1]), name=name)


def _existing(path: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data set file not found: {path}")
    return path


# ----------------------------------------------------------------------------------------------------
# scikit-learn digits.

def _bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
    """[size_out, size_in] weights of half-pixel-centred bilinear resampling (align_corners=False)."""
    source = np.maximum((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0.0)
    low = np.floor(source).astype(int)
    high = np.minimum(low + 1, size_in - 1)
    weight = source - low
    matrix = np.zeros((size_out, size_in))
    np.add.at(matrix, (np.arange(size_out), low), 1.0 - weight)
    np.add.at(matrix, (np.arange(size_out), high), weight)
    return matrix


def load_digits_dataset(resolution: int = 8, *, upsample: str = "bilinear",
                        dequantize_seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8x8 digits (UCI optdigits test set) as uint8 [1797, 1, R, R] and labels.

    Pixel values 0..16 map to 255·x/16 (float64). For R > 8 the float image is upsampled by `upsample`:
    'bilinear' (default; half-pixel centres, edge-clamped, as torch `interpolate(align_corners=False)`,
    smooth strokes suit a diffusion model) or 'nearest' (each pixel becomes an (R/8)² block). One
    rounding at the end, half up: floor(v + 0.5).

    dequantize_seed: if given, each integer intensity v ∈ {0..16} becomes (v + u)/17 with u ~ U[0, 1)
    drawn per pixel from default_rng(seed) (uniform dequantization, Theis et al. 2016), so the 17 grey
    levels no longer form a lattice a likelihood-ratio discriminator can key on.
    """
    from sklearn.datasets import (
        load_digits,  # local: scikit-learn is only needed for this source
    )

    if resolution < 8 or resolution & (resolution - 1):
        raise ValueError(f"load_digits_dataset: expected resolution a power of two >= 8, found {resolution}")
    if upsample not in ("bilinear", "nearest"):
        raise ValueError(f"load_digits_dataset: expected upsample 'bilinear' or 'nearest', found {upsample!r}")
    bunch = load_digits()
    values = bunch.images.astype(np.float64) * 255.0 / 16.0                     # [N, 8, 8]
    if dequantize_seed is not None:
        jitter = np.random.default_rng(dequantize_seed).random(bunch.images.shape)
        values = (bunch.images + jitter) * 255.0 / 17.0 - 0.5                   # floor(+0.5) below

    if resolution > 8 and upsample == "nearest":
        factor = resolution // 8
        values = values.repeat(factor, axis=1).repeat(factor, axis=2)           # [N, R, R]
    elif resolution > 8:
        matrix = _bilinear_matrix(8, resolution)                                # [R, 8]
        values = np.einsum("ri,nij,sj->nrs", matrix, values, matrix)            # [N, R, R]
    images = np.clip(np.floor(values + 0.5), 0, 255).astype(np.uint8)
    images = einops.rearrange(images, "n h w -> n 1 h w")
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(bunch.target.astype(np.int64))


# ----------------------------------------------------------------------------------------------------
# Splits and summaries.

def split_indices(labels: ArrayLike, held_out_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified, deterministic train / held-out split: sorted int64 index tensors.

    For each class c in increasing order (−1 counts as one class), the class's indices are permuted by
    one numpy.random.default_rng(seed) stream and the first floor(f·n_c + 0.5) are held out. The result
    depends only on (labels, fraction, seed) and the numpy PCG64 stream, not on the machine.
    """
    labels = _numpy(labels)
    if labels.ndim != 1:
        raise ValueError(f"split_indices: expected labels [N], found shape {labels.shape}")
    if not 0.0 <= held_out_fraction < 1.0:
        raise ValueError(f"split_indices: expected held_out_fraction in [0, 1), found {held_out_fraction}")
    rng = np.random.default_rng(seed)
    train, held = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        count = int(np.floor(held_out_fraction * len(members) + 0.5))
        held.append(members[:count])
        train.append(members[count:])
    return _sorted_index(train), _sorted_index(held)


def _sorted_index(parts: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.sort(np.concatenate([np.zeros(0, np.int64), *parts]))).long()


def first_per_class(labels: ArrayLike, per_class: int = 4, max_classes: int | None = None) -> torch.Tensor:
    """Indices of the first `per_class` images of each class, interleaved so a grid with one column
    per class shows class c in column c: [c0 #0, c1 #0, …, c0 #1, c1 #1, …]. With more than
    `max_classes` classes, only that many evenly spaced ones (ImageNet: a 10-column grid)."""
    labels = _numpy(labels)
    classes = np.unique(labels)
    if max_classes is not None and len(classes) > max_classes:
        classes = classes[np.linspace(0, len(classes) - 1, max_classes).round().astype(int)]
    columns = [np.flatnonzero(labels == c)[:per_class] for c in classes]
    rows = [[column[r] for column in columns if r < len(column)] for r in range(per_class)]
    return torch.tensor([i for row in rows for i in row], dtype=torch.long)


def summary(images: ArrayLike, labels: ArrayLike, train_index: ArrayLike, held_index: ArrayLike) -> dict:
    """Flat split summary for the metrics JSON."""
    images = validate_images(images)
    label_dim = infer_label_dim(labels)
    labels = validate_labels(labels, len(images), label_dim)
    return dict(images=len(images), train=len(train_index), held_out=len(held_index),
                held_out_fraction=len(held_index) / max(len(images), 1), resolution=int(images.shape[-1]),
                channels=int(images.shape[1]), label_dim=label_dim,
                smallest_class=int(np.bincount(labels).min()) if label_dim else len(images))


# ----------------------------------------------------------------------------------------------------
# Our prepared format: .npz with `images`, `labels` and optional metadata arrays.

def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed `.npz` whose bytes depend only on the arrays (fixed zip timestamps), so DVC
    sees an unchanged file when a stage reruns with the same inputs."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for key, value in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0)), member.getvalue())
    return buffer.getvalue()


def save_dataset(path: str | os.PathLike, images: ArrayLike | ImageFiles, labels: ArrayLike | None, *,
                 allow_empty: bool = False, **meta) -> pathlib.Path:
    """Validate and write an `.npz` atomically (temporary file + os.replace).

    `meta` values become extra arrays (e.g. name='digits', label_dim=10, train_index=…); object arrays
    are refused so the file always loads with allow_pickle=False. label_dim defaults to max(labels) + 1
    and is always recorded, so a split that misses a class keeps the full label_dim if it is passed.
    Lazy `ImageFiles` are written as a manifest (`image_files.manifest_arrays`: the source, the row
    names, one label per row, the decoding settings) instead of pixels.
    """
    path = pathlib.Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"save_dataset: expected a path ending in .npz, found {path}")
    images = validate_images(images, allow_empty=allow_empty)
    labels = np.full(len(images), -1, np.int64) if labels is None else labels
    meta.setdefault("label_dim", infer_label_dim(labels))
    labels = validate_labels(labels, len(images), int(meta["label_dim"]))
    if isinstance(images, ImageFiles):
        arrays = image_files.manifest_arrays(images, labels, int(meta.pop("label_dim")))
    else:
        arrays = {"images": images, "labels": labels}
    atomic_write_bytes(path, npz_bytes(_with_meta(arrays, meta)))
    log.info("wrote %s: %d images %s%s", path, len(images), tuple(images.shape[1:]),
             " (manifest of image files, no pixels)" if isinstance(images, ImageFiles) else "")
    return path


def _with_meta(arrays: dict[str, np.ndarray], meta: dict) -> dict[str, np.ndarray]:
    """`arrays` plus the `meta` values as arrays; reserved keys and object arrays are refused."""
    arrays = dict(arrays)
    for key, value in meta.items():
        if key in arrays:
            raise ValueError(f"save_dataset: meta key {key!r} is reserved")
        arrays[key] = _numpy(value)
        if arrays[key].dtype == object:
            raise ValueError(f"save_dataset: meta {key!r} must be a plain array/scalar/str, found object dtype")
    return arrays


def load_dataset(path: str | os.PathLike, *, allow_empty: bool = False) -> Dataset:
    """Load and validate a prepared `.npz` (no pickle). Name: meta `name`, else the file stem.
    `allow_empty`: a file with zero images is accepted (the held-out split of `held_out_fraction: 0`).
    A manifest of image files (see `save_dataset`) gives a Dataset with lazy `ImageFiles` images."""
    path = _existing(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not an .npz file (an .npz is a zip archive of .npy arrays; "
                         f"found {path.read_bytes()[:8]!r}...)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: not a readable .npz without pickle ({error})") from error
    name = str(arrays["name"]) if "name" in arrays else path.stem
    if image_files.is_manifest(arrays):
        manifest = image_files.from_manifest(arrays, str(path))
        return make_dataset(manifest.images, manifest.labels, name=name, label_dim=manifest.label_dim,
                            allow_empty=allow_empty)
    if "images" not in arrays:
        raise ValueError(f"{path}: expected an array 'images', found {sorted(arrays)}")
    label_dim = int(arrays["label_dim"]) if "label_dim" in arrays else None
    return make_dataset(arrays["images"], arrays.get("labels"), name=name, label_dim=label_dim,
                        allow_empty=allow_empty)


# ----------------------------------------------------------------------------------------------------
# EDM dataset zip (Karras et al. 2022, `dataset_tool.py`): PNGs + dataset.json.

def _decode_png(payload: bytes, name: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(payload)) as image:
            if image.mode not in ("L", "RGB"):
                raise ValueError(f"{name}: expected PNG mode L or RGB, found {image.mode}")
            pixels = np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:  # PIL's errors for corrupt files
        raise ValueError(f"{name}: not a readable PNG ({type(error).__name__}: {error})") from error
    return pixels[None] if pixels.ndim == 2 else einops.rearrange(pixels, "h w c -> c h w")  # [C, H, W]


def _edm_labels(archive: zipfile.ZipFile, names: list[str], path: pathlib.Path) -> np.ndarray:
    if "dataset.json" not in archive.namelist():
        return np.full(len(names), -1, np.int64)
    table = json.loads(archive.read("dataset.json")).get("labels")
    if table is None:
        return np.full(len(names), -1, np.int64)
    table = dict(table)
    missing = [name for name in names if name not in table]
    if missing:
        raise ValueError(f"{path}: dataset.json has no label for {missing[:3]} ({len(missing)} missing)")
    labels = [table[name] for name in names]
    if not all(isinstance(label, int) and not isinstance(label, bool) for label in labels):
        raise ValueError(f"{path}: expected integer class labels in dataset.json, found e.g. {labels[0]!r}")
    return np.asarray(labels, dtype=np.int64)


def read_edm_zip(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 [N, C, H, W] and labels int64 [N] from an EDM dataset zip, in sorted name order."""
    path = _existing(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not an EDM dataset zip (not a zip archive)")
    with zipfile.ZipFile(path) as archive:
        names = sorted(name for name in archive.namelist() if name.lower().endswith(".png"))
        if not names:
            raise ValueError(f"{path}: expected PNG images in the zip, found none")
        images = [_decode_png(archive.read(name), f"{path}:{name}") for name in names]
        labels = _edm_labels(archive, names, path)
    shapes = {image.shape for image in images}
    if len(shapes) != 1:
        raise ValueError(f"{path}: expected all images the same shape, found {sorted(shapes)}")
    images = validate_images(np.stack(images), where=str(path))
    return torch.from_numpy(images), torch.from_numpy(labels)


# ----------------------------------------------------------------------------------------------------
# CIFAR-10 python tarball (Krizhevsky 2009): cPickle'd dicts, read with a restricted unpickler.

def _numpy_reconstruct():
    return np.empty(0).__reduce__()[0]  # numpy.{core,_core}.multiarray._reconstruct, either numpy


_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,  # Python 2 / numpy 1.x spelling
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: codecs.encode,  # how Python 3 writes bytes at protocol 2
}


class _CifarUnpickler(pickle.Unpickler):
    """Allows only the numpy-array globals a CIFAR-10 batch needs; refuses anything else by name."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: a CIFAR-10 batch may only use "
                                         f"{sorted(f'{m}.{n}' for m, n in _CIFAR_GLOBALS)}")
        return _CIFAR_GLOBALS[(module, name)]()

    def persistent_load(self, pid):
        raise pickle.UnpicklingError(f"refused persistent id {pid!r} in a CIFAR-10 batch")


def _read_cifar_batch(payload: bytes, member: str, strict: bool) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _CifarUnpickler(io.BytesIO(payload), encoding="latin1").load()
    except pickle.UnpicklingError as error:
        raise pickle.UnpicklingError(f"{member}: {error}") from None
    if not isinstance(batch, dict):
        raise ValueError(f"{member}: expected a dict, found {type(batch).__name__}")
    batch = {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in batch.items()}
    data, labels = batch.get("data"), np.asarray(batch.get("labels"))
    count = CIFAR10_BATCH_SIZE if strict else len(labels)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape != (count, 3 * 32 * 32):
        found = (data.dtype, data.shape) if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{member}: expected 'data' uint8 ({count}, 3072), found {found}")
    if labels.shape != (count,) or labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{member}: expected {count} integer 'labels' in 0..9, found {labels.dtype} "
                         f"{labels.shape}")
    return data, labels.astype(np.int64)


def read_cifar10_tarball(path: str | os.PathLike, split: str = "train", *,
                         strict: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 from `cifar-10-python.tar.gz`: uint8 [50000 | 10000, 3, 32, 32] and labels, file order.

    Rows of `data` are channel-major (1024 R, 1024 G, 1024 B, each row-major). `strict` also checks
    10,000 images per batch file (turn off only for small synthetic archives in tests).
    """
    if split not in CIFAR10_MEMBERS:
        raise ValueError(f"read_cifar10_tarball: expected split 'train' or 'test', found {split!r}")
    path = _existing(path)
    data, labels = [], []
    with tarfile.open(path, "r:gz") as archive:
        found = set(archive.getnames())
        for member in CIFAR10_MEMBERS[split]:
            if member not in found:
                raise ValueError(f"{path}: expected member {member}, found {sorted(found)[:8]}")
            batch_data, batch_labels = _read_cifar_batch(archive.extractfile(member).read(), member, strict)
            data.append(batch_data)
            labels.append(batch_labels)
    images = einops.rearrange(np.concatenate(data), "n (c h w) -> n c h w", c=3, h=32, w=32)
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(np.concatenate(labels))


# ----------------------------------------------------------------------------------------------------
# Dispatch.

def load_any(path: str | os.PathLike, *, resolution: int | None = None, crop: str = "center",
             seed: int = 0) -> Dataset:
    """A Dataset from `.npz` (ours), `.zip` (EDM, or a zip of ImageNet class folders), an ImageNet folder
    tree (a directory: `path/train/<wnid>/*.JPEG`, else `path/<wnid>/*.JPEG`) or `cifar-10-python.tar.gz`
    (training split). Image folders and their zips stay lazy (`ImageFiles`) and need `resolution` (R of
    VAR's resize + crop, `crop` 'center' or 'random', `seed` of the random crops); other formats ignore them.
    """
    path = pathlib.Path(path)
    if not path.suffix and not path.exists():
        raise FileNotFoundError(f"image folder not found: {path}")
    if path.is_dir() or (path.suffix == ".zip" and image_files.is_image_zip(path)):
        return _image_folder_dataset(path, resolution, crop, seed)
    if path.suffix == ".npz":
        return load_dataset(path)
    if path.suffix == ".zip":
        return make_dataset(*read_edm_zip(path), name=path.stem)
    if path.name == "cifar-10-python.tar.gz":
        return make_dataset(*read_cifar10_tarball(path), name="cifar10", label_dim=10)
    raise ValueError(f"{path}: unknown data set format; expected .npz, an EDM .zip, cifar-10-python.tar.gz, "
                     f"or an ImageNet folder tree (a directory) or a zip of one")


def _image_folder_dataset(path: pathlib.Path, resolution: int | None, crop: str, seed: int) -> Dataset:
    """A lazy Dataset over an ImageNet folder tree or zip; label_dim = the number of class folders."""
    if resolution is None:
        raise ValueError(f"{path}: an image folder or zip needs a resolution (R of the resize + crop), found None")
    files = image_files.open_image_files(path, resolution=resolution, crop=crop, seed=seed)
    return make_dataset(files, files.labels, name=path.stem, label_dim=len(files.classes))


def load_source(source: str, *, resolution: int | None = None, dequantize_seed: int | None = None,
                crop: str = "center", seed: int = 0) -> tuple[Images, torch.Tensor]:
    """Images and labels for a `data.source` setting: 'digits' (at `resolution`, default 8) or a path.

    `resolution` also sets R for an ImageNet folder tree or zip (required there; `crop`, `seed` as in
    `load_any`), whose images come back lazy (`ImageFiles`); other files keep their stored resolution.
    """
    if source == "digits":
        return load_digits_dataset(8 if resolution is None else resolution, dequantize_seed=dequantize_seed)
    dataset = load_any(source, resolution=resolution, crop=crop, seed=seed)
    if not isinstance(dataset.images, ImageFiles):
        log.info("loaded %s: %d images, resolution %d (the resolution setting applies to digits and image "
                 "folders only)", source, len(dataset), dataset.resolution)
    return dataset.images, dataset.labels


# ----------------------------------------------------------------------------------------------------
# Model-side conversions and batching.

def to_float(images: ArrayLike) -> torch.Tensor:
    """uint8 [.., C, H, W] → float32 in [−1, 1] by x / 127.5 − 1 (EDM training convention)."""
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8:
        raise ValueError(f"to_float: expected uint8 images, found {images.dtype}")
    return images.to(torch.float32) / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """EDM pixel quantisation (x·127.5 + 128).clip(0, 255) -> uint8 (truncating); x in [-1, 1]: [N, C, H, W]."""
    if not x.is_floating_point():
        raise TypeError(f"to_uint8: expected a floating tensor, found {x.dtype}")
    return (x * 127.5 + 128).clip(0, 255).to(torch.uint8)


def one_hot(labels: ArrayLike, label_dim: int) -> torch.Tensor:
    """int labels [N] → float32 one-hot [N, label_dim] (EDM class_labels). label_dim 0 gives [N, 0]."""
    labels = torch.as_tensor(labels)
    validate_labels(labels, len(labels), label_dim)
    if label_dim == 0:
        return torch.zeros(len(labels), 0)
    if (labels < 0).any():
        raise ValueError(f"one_hot: labels are -1 (unlabelled) but label_dim is {label_dim}")
    return torch.nn.functional.one_hot(labels.long(), label_dim).to(torch.float32)


def class_balanced_labels(n: int, label_dim: int) -> torch.Tensor:
    """int64 [n] with label i mod label_dim: balanced and deterministic (EDM FID protocol)."""
    if label_dim < 1 or n < 0:
        raise ValueError(f"class_balanced_labels: expected n >= 0 and label_dim >= 1, found {n}, {label_dim}")
    return torch.arange(n, dtype=torch.int64) % label_dim


def select(images: Images, index: ArrayLike) -> Images:
    """Rows `index` of a data set's images: `images[index]` for a tensor, a lazy `subset` (nothing
    decoded) for `ImageFiles`, so a train / held-out split of ImageNet costs no pixels."""
    return images.subset(index) if isinstance(images, ImageFiles) else images[index]


def take(images: Images, index: ArrayLike, epoch: int | ArrayLike = 0) -> torch.Tensor:
    """uint8 [B, C, H, W] rows `index` at `epoch` (an int, or int [B] from `batch_epochs`): decoded for
    `ImageFiles` (random crops depend on the epoch), `images[index]` for a tensor (epoch ignored)."""
    return images.take(index, epoch) if isinstance(images, ImageFiles) else images[index]


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of epoch `epoch`: numpy.random.default_rng([seed, epoch]).permutation(n)."""
    return torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(n))


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """int64 [batch_size] indices of minibatch `step` of an endless stream of shuffled epochs.

    The stream is epoch 0's permutation, then epoch 1's, …; batch `step` is positions
    step·B … step·B + B − 1 of it (it may straddle two epochs, so every image is seen once per epoch).
    A pure function of (n, B, seed, step): a resumed run draws the identical batches.
    """
    if n < 1 or batch_size < 1 or step < 0:
        raise ValueError(f"batch_indices: expected n, batch_size >= 1 and step >= 0, found {n}, {batch_size}, {step}")
    positions = step * batch_size + np.arange(batch_size)
    epochs = positions // n
    index = np.empty(batch_size, np.int64)
    for epoch in np.unique(epochs):
        mask = epochs == epoch
        index[mask] = epoch_permutation(n, seed, int(epoch)).numpy()[positions[mask] % n]
    return torch.from_numpy(index)


def batch_epochs(n: int, batch_size: int, step: int) -> torch.Tensor:
    """int64 [batch_size]: the epoch each row of `batch_indices(n, batch_size, ·, step)` comes from (a
    batch may straddle two epochs); pass it to `take` so random crops change from epoch to epoch."""
    if n < 1 or batch_size < 1 or step < 0:
        raise ValueError(f"batch_epochs: expected n, batch_size >= 1 and step >= 0, found {n}, {batch_size}, {step}")
    return torch.div(step * batch_size + torch.arange(batch_size), n, rounding_mode="floor")


def label_matched_indices(pool_labels: torch.Tensor, wanted: torch.Tensor,
                          generator: torch.Generator) -> torch.Tensor:
    """int64 [B]: for each wanted label, a uniformly drawn index of a pool row with that label.

    pool_labels: int64 [N]; wanted: int64 [B]. Draws with replacement from `generator` only, so a
    resumed run draws the same rows. Used to give every real row a fake of the same class (the official
    VAR DDO recipe generates its fakes with the real batch's labels).
    """
    index = torch.empty(len(wanted), dtype=torch.int64)
    for label in torch.unique(wanted).tolist():
        rows = (wanted == label).nonzero().flatten()
        candidates = (pool_labels == label).nonzero().flatten()
        if len(candidates) == 0:
            raise ValueError(f"label_matched_indices: the pool has no row with label {label}")
        index[rows] = candidates[torch.randint(len(candidates), (len(rows),), generator=generator)]
    return index


def batches(dataset: Dataset, batch_size: int, seed: int, *,
            start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (x float32 [B, C, H, W] in [−1, 1], labels int64 [B]) for steps start_step, start_step+1, …

    Batch k is `batch_indices(len(dataset), batch_size, seed, k)`, so starting at step k yields exactly
    the tail of the stream started at 0. Lazy images are decoded at each row's epoch (`batch_epochs`).
    """
    step = start_step
    while True:
        index = batch_indices(len(dataset), batch_size, seed, step)
        epochs = batch_epochs(len(dataset), batch_size, step)
        yield to_float(take(dataset.images, index, epochs)), dataset.labels[index]
        step += 1


def concatenate(datasets: list[Dataset], *, name: str = "all") -> Dataset:
    """All images of several data sets with the same shape and label_dim (e.g. train + held-out). Lazy
    data sets over one source with the same decoding settings give a lazy one; lazy and in-memory do not mix."""
    shapes = {(d.channels, d.resolution, d.label_dim) for d in datasets}
    if len(shapes) != 1:
        raise ValueError(f"concatenate: data sets differ in (channels, resolution, label_dim): {sorted(shapes)}")
    lazy = [isinstance(d.images, ImageFiles) for d in datasets]
    if any(lazy) and not all(lazy):
        raise ValueError(f"concatenate: expected all data sets in memory or all lazy image files, found "
                         f"{[(d.name, 'lazy' if flag else 'tensor') for d, flag in zip(datasets, lazy, strict=True)]}")
    images = (image_files.concatenate([d.images for d in datasets]) if all(lazy)
              else torch.cat([d.images for d in datasets]))
    return make_dataset(images, torch.cat([d.labels for d in datasets]), name=name,
                        label_dim=datasets[0].label_dim, allow_empty=True)
