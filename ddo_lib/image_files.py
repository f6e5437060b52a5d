"""Image files as a lazy uint8 array: ImageNet-style class folders (or a zip of them), decoded on indexing.

`ImageFiles` behaves like the uint8 tensor [N, 3, R, R] that `ddo_lib.data` holds for small data sets
(`len`, `shape`, `dtype`, indexing by int / slice / index array) without holding the pixels: ImageNet at
R = 256 would be ≈ 250 GB. Only the file names and labels live in memory.

Layout (torchvision `ImageFolder`, which the official VAR trainer reads): `<root>/train/<wnid>/…/*.JPEG`,
or `<root>/<wnid>/…` when there is no `train` folder; `.jpeg`, `.jpg`, `.png` in any case. A zip holds the
same tree. Label = index of the wnid in the sorted class folder names; rows are ordered by class, then by
(folder, file name), as `sorted(os.walk(…))`.

Preprocessing (Tian et al. 2024 (VAR), official data pipeline; horizontal flips are off there by default):

| step    | VAR                                          | here                                              |
|---------|----------------------------------------------|---------------------------------------------------|
| decode  | PIL open, `convert('RGB')`                   | same (grey, CMYK, palette → RGB)                  |
| resize  | `Resize(round(1.125·R), LANCZOS)`            | short side round(1.125·R), long side truncated    |
|         |                                              | (torchvision's rule), PIL `Image.resize` LANCZOS  |
| crop    | validation: `CenterCrop(R)`                  | `crop='center'`: offset round((size − R) / 2)     |
|         | training: `RandomCrop(R)`, torch's RNG       | `crop='random'`: uniform offset from              |
|         |                                              | `numpy.random.default_rng([seed, row, epoch])`    |

Contract: the pixels of row i at epoch e are a function of (file bytes, R, crop, seed, i, e) only, so a
resumed run and any number of processes see the same images (i is the row in *this* array; `subset`
renumbers). Indexing is epoch 0; `take(index, epoch)` chooses the epoch. An `ImageFiles` pickles without
an open file: a zip is opened on first use in each process, and again after a fork.

A manifest (`manifest_arrays` / `from_manifest`, format `FORMAT`) records a split by name, not by pixel, so
the data stage can "save" ImageNet in megabytes.
"""
from __future__ import annotations

import concurrent.futures
import functools
import io
import logging
import os
import pathlib
import posixpath
import threading
import zipfile
from collections.abc import Sequence
from typing import Any, NamedTuple

import einops
import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

FORMAT = "ddo_lib.image_files/1"
EXTENSIONS = (".jpeg", ".jpg", ".png")   # compared lower-case
KINDS = ("folder", "zip")
CROPS = ("center", "random")
RESIZE_RATIO = 1.125                      # VAR `mid_reso`: short side round(1.125·R) before the R×R crop
DEFAULT_WORKERS = min(8, os.cpu_count() or 1)  # decoding threads (PIL releases the GIL while resampling)
MANIFEST_KEYS = ("format", "root", "kind", "names", "labels", "class_labels", "label_dim", "resolution",
                 "crop", "seed", "classes")


# ----------------------------------------------------------------------------------------------------
# Preprocessing of one image.

def resized_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """(W', H') after VAR's resize: short side round(1.125·R), long side int(short·long / short_in)
    (torchvision `Resize(int)` truncates; both sides scale by ≈ the same factor, aspect kept)."""
    short = round(RESIZE_RATIO * resolution)
    if width <= height:
        return short, int(short * height / width)
    return int(short * width / height), short


def crop_offset(size: tuple[int, int], resolution: int, *, crop: str, seed: int, row: int,
                epoch: int) -> tuple[int, int]:
    """(top, left) of the R×R crop of a resized (W', H') image.

    'center': int(round((H' − R) / 2)), likewise left (torchvision `CenterCrop`, Python's round).
    'random': top ~ U{0..H'−R}, then left ~ U{0..W'−R}, from numpy default_rng([seed, row, epoch]).
    """
    width, height = size
    if crop == "center":
        return round((height - resolution) / 2.0), round((width - resolution) / 2.0)
    generator = np.random.default_rng([seed, row, epoch])
    return int(generator.integers(height - resolution + 1)), int(generator.integers(width - resolution + 1))


def decode(payload: bytes, where: str) -> Image.Image:
    """An RGB PIL image from encoded bytes (VAR's loader: open, convert('RGB')); PIL's decompression-bomb
    guard stays on. A file PIL cannot read raises ValueError naming `where`."""
    try:
        with Image.open(io.BytesIO(payload)) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"{where}: not a readable image ({type(error).__name__}: {error})") from error


def preprocess(image: Image.Image, resolution: int, *, crop: str = "center", seed: int = 0, row: int = 0,
               epoch: int = 0) -> np.ndarray:
    """uint8 [3, R, R]: VAR's resize (LANCZOS) and crop of an RGB image (module table)."""
    size = resized_size(*image.size, resolution)
    resized = image.resize(size, Image.Resampling.LANCZOS)
    top, left = crop_offset(size, resolution, crop=crop, seed=seed, row=row, epoch=epoch)
    pixels = np.asarray(resized.crop((left, top, left + resolution, top + resolution)))  # [R, R, 3]
    return einops.rearrange(pixels, "h w c -> c h w")


def check_settings(resolution: int, crop: str, seed: int) -> None:
    """ValueError unless R is a power of two, crop is known and seed is a non-negative int."""
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 1 \
            or resolution & (resolution - 1):
        raise ValueError(f"image files: expected resolution a power of two, found {resolution!r}")
    if crop not in CROPS:
        raise ValueError(f"image files: expected crop in {CROPS}, found {crop!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"image files: expected a non-negative integer seed, found {seed!r}")


# ----------------------------------------------------------------------------------------------------
# Listing a folder tree or a zip.

class Listing(NamedTuple):
    names: list[str]       # [N] paths relative to the source (folder) or member names (zip)
    labels: np.ndarray     # int64 [N] class index
    classes: list[str]     # sorted wnids


def _is_image(name: str) -> bool:
    return name.lower().endswith(EXTENSIONS)


def _index(tree: dict[str, list[str]], prefix: str, where: str) -> Listing:
    """Rows of {wnid: image paths inside the class folder}: classes sorted, files by (folder, name)."""
    classes = sorted(tree)
    if not classes:
        raise ValueError(f"{where}: expected class folders (<wnid>/*.JPEG), found none")
    if not any(tree.values()):
        raise ValueError(f"{where}: expected images ({', '.join(EXTENSIONS)}) in the class folders, found none")
    empty = [wnid for wnid in classes if not tree[wnid]]
    if empty:
        raise ValueError(f"{where}: expected images in every class folder, found none in {empty[:5]}")
    names = [f"{prefix}{wnid}/{file}" for wnid in classes for file in sorted(tree[wnid], key=posixpath.split)]
    counts = [len(tree[wnid]) for wnid in classes]
    return Listing(names, np.repeat(np.arange(len(classes), dtype=np.int64), counts), classes)


def _class_files(folder: str) -> list[str]:
    """Image paths under one class folder, relative to it, '/'-separated (symbolic links followed)."""
    return [pathlib.Path(directory, file).relative_to(folder).as_posix()
            for directory, _, files in os.walk(folder, followlinks=True) for file in files if _is_image(file)]


def list_folder(root: str | os.PathLike) -> Listing:
    """The rows of an ImageNet folder tree: `root/train/<wnid>/…` if `root/train` exists, else `root/<wnid>/…`."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    prefix = "train/" if (root / "train").is_dir() else ""
    with os.scandir(root / prefix) as entries:
        tree = {entry.name: _class_files(entry.path) for entry in entries if entry.is_dir()}
    return _index(tree, prefix, str(root / prefix))


def list_zip_names(members: Sequence[str], where: str) -> Listing:
    """The rows of a zip's member names: `train/<wnid>/…` if any member is under `train/`, else `<wnid>/…`
    (files outside a class folder and macOS `__MACOSX/` resource forks are skipped)."""
    prefix = "train/" if any(name.startswith("train/") for name in members) else ""
    tree: dict[str, list[str]] = {}
    for name in members:
        parts = name[len(prefix):].split("/", 1)
        if name.startswith(prefix) and len(parts) == 2 and parts[0] != "__MACOSX" and _is_image(name):
            tree.setdefault(parts[0], []).append(parts[1])
    return _index(tree, prefix, where)


def list_zip(path: str | os.PathLike) -> Listing:
    """The rows of a zip holding an ImageNet tree."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image zip not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: expected a zip of class folders, found a file that is not a zip")
    with zipfile.ZipFile(path) as archive:
        return list_zip_names(archive.namelist(), str(path))


def is_image_zip(path: str | os.PathLike) -> bool:
    """True for a zip with .jpeg/.jpg members inside folders and no `dataset.json` (an EDM dataset zip)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return "dataset.json" not in names and any("/" in n and n.lower().endswith((".jpeg", ".jpg")) for n in names)


# ----------------------------------------------------------------------------------------------------
# The lazy array.

class _Archive(NamedTuple):
    """One process's open zip (a handle inherited through fork shares its file offset, so never reuse it)."""

    pid: int
    archive: zipfile.ZipFile
    lock: threading.Lock   # zipfile reads seek a shared file: one member at a time


class ImageFiles:
    """Lazy uint8 [N, 3, R, R] RGB images from image files, decoded (module table) when indexed.

    root: the source as given (a folder, or a zip file); names: [N] paths relative to root, or member
    names; labels: int64 [N] class indices into `classes` (sorted wnids). Immutable: every attribute is a
    read-only property, and `subset` / `concatenate` return new arrays.
    """

    def __init__(self, root: str | os.PathLike, kind: str, names: Sequence[str] | np.ndarray,
                 labels: Sequence[int] | np.ndarray, classes: Sequence[str], *,
                 resolution: int,                 # R: output H = W, a power of two
                 crop: str = "center",            # 'center' (VAR validation) or 'random' (VAR training)
                 seed: int = 0,                   # random crops: default_rng([seed, row, epoch])
                 workers: int = DEFAULT_WORKERS):  # decoding threads per `take`
        check_settings(resolution, crop, seed)
        if kind not in KINDS:
            raise ValueError(f"image files: expected kind in {KINDS}, found {kind!r}")
        names = np.asarray(names, dtype=str).reshape(-1) if len(names) else np.zeros(0, "<U1")
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if labels.shape != names.shape:
            raise ValueError(f"image files: expected one label per name ({len(names)}), found {len(labels)}")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise ValueError(f"image files: expected labels in [0, {len(classes)}), found "
                             f"[{labels.min()}, {labels.max()}]")
        self._root, self._kind, self._classes = str(root), kind, tuple(str(c) for c in classes)
        self._names, self._labels = names, labels
        self._resolution, self._crop, self._seed, self._workers = int(resolution), crop, int(seed), int(workers)
        self._freeze()

    def _freeze(self) -> None:
        self._names.flags.writeable = False
        self._labels.flags.writeable = False
        self._handle: _Archive | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key != "_handle"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._names, self._labels = self._names.copy(), self._labels.copy()  # unpickled: writeable again
        self._freeze()

    def __repr__(self) -> str:
        return (f"ImageFiles({self._kind} {self._root!r}, {len(self)} images, resolution {self._resolution}, "
                f"crop {self._crop!r}, seed {self._seed})")

    # --- Metadata (like a uint8 tensor) ---------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._names)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), 3, self._resolution, self._resolution))

    @property
    def dtype(self) -> torch.dtype:
        return torch.uint8

    @property
    def ndim(self) -> int:
        return 4

    @property
    def labels(self) -> torch.Tensor:
        """int64 [N]: index of each image's class folder in `classes`."""
        return torch.from_numpy(self._labels.copy())

    @property
    def classes(self) -> list[str]:
        return list(self._classes)

    @property
    def names(self) -> np.ndarray:
        """Read-only unicode [N]: paths relative to `root`, or zip member names."""
        return self._names

    root = property(lambda self: self._root)
    kind = property(lambda self: self._kind)
    resolution = property(lambda self: self._resolution)
    crop = property(lambda self: self._crop)
    seed = property(lambda self: self._seed)

    def settings(self) -> dict[str, Any]:
        """What two arrays must share to be concatenated: source, decoding and classes."""
        return dict(root=self._root, kind=self._kind, resolution=self._resolution, crop=self._crop,
                    seed=self._seed, classes=self._classes)

    # --- Rows -----------------------------------------------------------------------------------------

    def rows(self, index: Any) -> np.ndarray:
        """int64 [B] non-negative row numbers of an int array / list / tensor (negatives count from the
        end), a bool mask [N], or a slice."""
        if isinstance(index, slice):
            return np.arange(len(self), dtype=np.int64)[index]
        rows = np.asarray(index.detach().cpu() if isinstance(index, torch.Tensor) else index)
        if rows.dtype == bool and rows.shape == (len(self),):
            return np.flatnonzero(rows).astype(np.int64)
        if rows.size == 0:
            return np.zeros(0, np.int64)
        if rows.ndim != 1 or rows.dtype.kind not in "iu":
            raise IndexError(f"image files: expected an integer index [B] or a bool mask [{len(self)}], "
                             f"found {rows.dtype} {rows.shape}")
        if rows.min() < -len(self) or rows.max() >= len(self):
            raise IndexError(f"image files: index out of range [{rows.min()}, {rows.max()}] for {len(self)} images")
        return np.where(rows < 0, rows + len(self), rows).astype(np.int64)

    def __getitem__(self, index: Any) -> torch.Tensor:
        """x[i] → uint8 [3, R, R]; x[index] or x[a:b] → uint8 [B, 3, R, R] (epoch 0)."""
        if isinstance(index, (int, np.integer)) or (isinstance(index, torch.Tensor) and index.ndim == 0):
            return self.take([int(index)])[0]
        return self.take(index)

    def subset(self, index: Any) -> ImageFiles:
        """A new lazy array of rows `index` (nothing decoded); its row numbers start again at 0."""
        rows = self.rows(index)
        return self._with(self._names[rows], self._labels[rows])

    def _with(self, names: np.ndarray, labels: np.ndarray) -> ImageFiles:
        return ImageFiles(self._root, self._kind, names, labels, self._classes, resolution=self._resolution,
                          crop=self._crop, seed=self._seed, workers=self._workers)

    # --- Decoding -------------------------------------------------------------------------------------

    def take(self, index: Any, epoch: int | Sequence[int] | np.ndarray | torch.Tensor = 0) -> torch.Tensor:
        """uint8 [B, 3, R, R] of rows `index` (duplicates allowed) at `epoch`: one int, or int [B] (a batch
        that straddles two epochs). Only random crops depend on the epoch."""
        rows = self.rows(index)
        epochs = np.asarray(epoch.cpu() if isinstance(epoch, torch.Tensor) else epoch, dtype=np.int64)
        if epochs.ndim > 1 or (epochs.ndim == 1 and epochs.shape != rows.shape) or (epochs < 0).any():
            raise ValueError(f"image files: expected epoch a non-negative int or int [{len(rows)}], "
                             f"found {epochs.tolist()}")
        epochs = np.broadcast_to(epochs, rows.shape)
        decode_row = functools.partial(self._decode_row, archive=self._archive())
        if self._workers > 1 and len(rows) > 1:
            with concurrent.futures.ThreadPoolExecutor(min(self._workers, len(rows))) as pool:
                images = list(pool.map(decode_row, rows.tolist(), epochs.tolist()))
        else:
            images = list(map(decode_row, rows.tolist(), epochs.tolist()))
        if not images:
            return torch.zeros((0, 3, self._resolution, self._resolution), dtype=torch.uint8)
        return torch.from_numpy(np.stack(images))  # [B, 3, R, R]

    def where(self, row: int) -> str:
        """The file of a row, as error messages name it: `root/name` or `root:member`."""
        name = str(self._names[row])
        return os.path.join(self._root, name) if self._kind == "folder" else f"{self._root}:{name}"

    def _decode_row(self, row: int, epoch: int, archive: _Archive | None) -> np.ndarray:
        image = decode(self._read(row, archive), self.where(row))
        return preprocess(image, self._resolution, crop=self._crop, seed=self._seed, row=row, epoch=epoch)

    def _read(self, row: int, archive: _Archive | None) -> bytes:
        if archive is None:
            return pathlib.Path(self.where(row)).read_bytes()
        try:
            with archive.lock:
                return archive.archive.read(str(self._names[row]))
        except KeyError as error:
            raise ValueError(f"{self.where(row)}: member not found in the zip") from error

    def _archive(self) -> _Archive | None:
        """This process's zip handle: opened on first use, and again in a forked child."""
        if self._kind != "zip":
            return None
        if self._handle is None or self._handle.pid != os.getpid():
            if not os.path.isfile(self._root):
                raise FileNotFoundError(f"image zip not found: {self._root}")
            self._handle = _Archive(os.getpid(), zipfile.ZipFile(self._root), threading.Lock())
        return self._handle


# ----------------------------------------------------------------------------------------------------
# Opening, combining, manifests.

def open_image_files(path: str | os.PathLike, *, resolution: int, crop: str = "center", seed: int = 0,
                     workers: int = DEFAULT_WORKERS) -> ImageFiles:
    """ImageFiles over a folder tree (directory) or a zip of one (file); lists names, decodes nothing."""
    check_settings(resolution, crop, seed)
    path = pathlib.Path(path)
    kind = "folder" if path.is_dir() else "zip"
    listing = list_folder(path) if kind == "folder" else list_zip(path)
    log.info("%s: %d images in %d classes (%s)", path, len(listing.names), len(listing.classes), kind)
    return ImageFiles(path, kind, listing.names, listing.labels, listing.classes, resolution=resolution,
                      crop=crop, seed=seed, workers=workers)


def concatenate(parts: Sequence[ImageFiles]) -> ImageFiles:
    """All rows of several arrays over the same source and settings, in order (row numbers renumbered)."""
    if not parts:
        raise ValueError("image files: expected at least one array to concatenate, found none")
    settings = [part.settings() for part in parts]
    differing = sorted({key for other in settings[1:] for key in other if other[key] != settings[0][key]})
    if differing:
        raise ValueError(f"image files: cannot concatenate arrays that differ in {differing}: "
                         f"{[{key: s[key] for key in differing} for s in settings]}")
    names = np.concatenate([part.names for part in parts])
    return parts[0]._with(names, np.concatenate([part.labels.numpy() for part in parts]))


def manifest_arrays(files: ImageFiles, labels: np.ndarray, label_dim: int) -> dict[str, np.ndarray]:
    """The arrays of a manifest (format `FORMAT`): the source, row names and decoding settings, no pixels.

    `labels` int64 [N] are the data set's labels (all −1 when unconditional); `class_labels` keep the
    folder classes of the rows.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(files),):
        raise ValueError(f"manifest: expected labels [{len(files)}] (one per row), found {labels.shape}")
    return dict(format=np.array(FORMAT), root=np.array(files.root), kind=np.array(files.kind),
                names=files.names, labels=labels, class_labels=files.labels.numpy(),
                label_dim=np.array(label_dim, np.int64), resolution=np.array(files.resolution, np.int64),
                crop=np.array(files.crop), seed=np.array(files.seed, np.int64),
                classes=np.array(files.classes, dtype=str) if files.classes else np.zeros(0, "<U1"))


def is_manifest(arrays: dict[str, np.ndarray]) -> bool:
    """True if loaded `.npz` arrays declare themselves an image-files manifest (any version)."""
    return "format" in arrays and str(arrays["format"]).startswith(FORMAT.split("/")[0] + "/")


class Manifest(NamedTuple):
    images: ImageFiles
    labels: np.ndarray   # int64 [N]: the data set's labels
    label_dim: int


def from_manifest(arrays: dict[str, np.ndarray], where: str, *, workers: int = DEFAULT_WORKERS) -> Manifest:
    """Check a loaded manifest (format, keys, that its source still exists) and rebuild the lazy array."""
    if str(arrays.get("format")) != FORMAT:
        raise ValueError(f"{where}: expected manifest format {FORMAT!r}, found {str(arrays.get('format'))!r}")
    missing = [key for key in MANIFEST_KEYS if key not in arrays]
    if missing:
        raise ValueError(f"{where}: manifest lacks {missing} (found {sorted(arrays)})")
    root, kind = str(arrays["root"]), str(arrays["kind"])
    if not (os.path.isdir(root) if kind == "folder" else os.path.isfile(root)):
        raise FileNotFoundError(f"{where}: the manifest's image source {root} ({kind}) does not exist")
    images = ImageFiles(root, kind, arrays["names"], arrays["class_labels"], arrays["classes"].tolist(),
                        resolution=int(arrays["resolution"]), crop=str(arrays["crop"]),
                        seed=int(arrays["seed"]), workers=workers)
    return Manifest(images, arrays["labels"].astype(np.int64), int(arrays["label_dim"]))
