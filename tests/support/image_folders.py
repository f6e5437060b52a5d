"""Tiny ImageNet-style trees for tests (`train/<wnid>/*.JPEG` in a folder or a zip), with the awkward files
ImageNet really has: non-square sizes of every aspect, a greyscale JPEG, a CMYK JPEG, a palette PNG, an
RGBA PNG and a lower-case `.jpg`. Deterministic in `seed`; a few KB per class."""
import io
import pathlib
import zipfile

import numpy as np
from PIL import Image

# (class index, image index) -> (PIL mode, format, extension) of the special files; the rest are RGB .JPEG.
SPECIAL_FILES = {(0, 0): ("L", "JPEG", ".JPEG"), (0, 1): ("CMYK", "JPEG", ".JPEG"),
                 (1, 0): ("P", "PNG", ".png"), (1, 1): ("RGB", "JPEG", ".jpg"), (2, 0): ("RGBA", "PNG", ".PNG")}


def wnids(classes) -> list[str]:
    """`classes` wnid-like names (an int), or the given names (a sequence of str)."""
    if isinstance(classes, int):
        return [f"n{1440764 + 1009 * c:08d}" for c in range(classes)]
    return [str(c) for c in classes]


def _pixels(rng, width: int, height: int) -> np.ndarray:
    """uint8 [H, W, 3]: a colour gradient plus noise (so every crop offset gives different pixels)."""
    y, x = np.mgrid[0:height, 0:width]
    gradient = np.stack([255 * x / max(width - 1, 1), 255 * y / max(height - 1, 1), 128 + 0 * x], axis=-1)
    return np.clip(gradient + rng.normal(0, 40, (height, width, 3)), 0, 255).astype(np.uint8)


def _encode(pixels: np.ndarray, mode: str, image_format: str) -> bytes:
    image = Image.fromarray(pixels, "RGB")
    image = image.quantize(16) if mode == "P" else image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def _size(rng, size: tuple[int, int]) -> tuple[int, int]:
    """A non-square (W, H) within ±25 % of `size`."""
    width, height = (int(s + rng.integers(-(s // 4), s // 4 + 1)) for s in size)
    return (width + 1, height) if width == height else (width, height)


def imagenet_files(*, classes=3, per_class: int = 4, size: tuple[int, int] = (12, 10),
                   seed: int = 0) -> dict[str, bytes]:
    """{'<wnid>/<wnid>_<k><ext>': encoded image} for `classes` (count or wnids) x `per_class` images."""
    rng = np.random.default_rng(seed)
    files = {}
    for c, wnid in enumerate(wnids(classes)):
        for k in range(per_class):
            mode, image_format, extension = SPECIAL_FILES.get((c, k), ("RGB", "JPEG", ".JPEG"))
            width, height = _size(rng, size)
            files[f"{wnid}/{wnid}_{k}{extension}"] = _encode(_pixels(rng, width, height), mode, image_format)
    return files


def write_imagenet_folder(root, *, classes=3, per_class: int = 4, size: tuple[int, int] = (12, 10),
                          seed: int = 0) -> pathlib.Path:
    """Write `root/train/<wnid>/*.JPEG` (plus a non-image file the reader must skip); returns `root`."""
    root = pathlib.Path(root)
    for name, payload in imagenet_files(classes=classes, per_class=per_class, size=size, seed=seed).items():
        path = root / "train" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload)
    (path.parent / "notes.txt").write_text("not an image\n")
    return root


def write_imagenet_zip(path, *, classes=3, per_class: int = 4, size: tuple[int, int] = (12, 10), seed: int = 0,
                       top_level: bool = False) -> pathlib.Path:
    """The same tree as `write_imagenet_folder` in a zip (`train/<wnid>/…`, or `<wnid>/…` with `top_level`),
    members in reverse order (the reader must sort), plus a stray non-image member; returns `path`."""
    path, prefix = pathlib.Path(path), "" if top_level else "train/"
    files = imagenet_files(classes=classes, per_class=per_class, size=size, seed=seed)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("README.txt", "a tiny ImageNet-style tree\n")
        for name in reversed(list(files)):
            archive.writestr(prefix + name, files[name])
    return path


def pixels_in_child(images, index):
    """Index an (unpickled) ImageFiles in a child process: multiprocessing tests call this by reference."""
    return images[index]
