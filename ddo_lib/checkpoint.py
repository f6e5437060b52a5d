"""Atomic file writes and our own checkpoint files (any family).

Checkpoints are `torch.save` dicts of plain tensors and Python values, written through a temporary file
and `os.replace` (never a partial file) and read back with `torch.load(weights_only=True)`, which
refuses arbitrary pickled objects.
"""
from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any

import torch


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write(path: pathlib.Path, write) -> pathlib.Path:
    """Call `write(stream)` on a temporary file beside `path`, fsync, then os.replace it onto `path`."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o666 & ~_umask())  # what a plain open(path, "w") gives, not mkstemp's 0600
        os.replace(temporary, path)
    except BaseException:
        pathlib.Path(temporary).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> pathlib.Path:
    """Write `payload` to `path` (parent folders created) without ever leaving a partial file."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _atomic_write(path, lambda stream: stream.write(payload))


def write_json(path: str | os.PathLike, record: dict[str, Any]) -> pathlib.Path:
    """Atomically write a small, key-sorted JSON file (metrics, summaries)."""
    return atomic_write_bytes(path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """torch.save `payload` atomically; the folder must exist (a typo in a path is an error, not a new tree)."""
    if not isinstance(payload, dict):
        raise TypeError(f"payload must be a dict; found {type(payload).__name__}")
    path = pathlib.Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"checkpoint directory does not exist: {path.parent}")
    _atomic_write(path, lambda stream: torch.save(payload, stream))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu", *,
                    mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` with `torch.load(weights_only=True)`; `mmap`: tensors
    are memory-mapped from the file instead of read into RAM (large pools)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as error:
        raise ValueError(f"{path}: expected a checkpoint written by save_checkpoint (torch.save zip, "
                         f"weights_only); could not read it ({type(error).__name__}: {error})") from error
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: expected a dict payload; found {type(payload).__name__}")
    return payload
