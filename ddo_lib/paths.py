"""Repository-relative paths and atomic small-file writes.

papermill runs a notebook in the caller's directory and JupyterLab in `notebooks/`; every path a
stage receives is resolved against the repository root so both behave the same.
"""
from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any


def repo_root(start: str | pathlib.Path | None = None) -> pathlib.Path:
    """The nearest ancestor of `start` (default: cwd) holding `dvc.yaml`, else the package's parent."""
    here = pathlib.Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    return pathlib.Path(__file__).resolve().parents[1]


def resolve(path: str | pathlib.Path) -> pathlib.Path:
    """An absolute path: relative paths are taken from the repository root."""
    path = pathlib.Path(path)
    return path if path.is_absolute() else repo_root() / path


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | pathlib.Path, payload: bytes) -> pathlib.Path:
    """Write `payload` to `path` via a temporary file and os.replace: never a partial file.

    The file gets the permissions a plain `open(path, "w")` would give (0666 minus the umask), not
    mkstemp's private 0600.
    """
    path = resolve(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        pathlib.Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | pathlib.Path, record: dict[str, Any]) -> pathlib.Path:
    """Atomically write a small, key-sorted JSON file (metrics, summaries)."""
    return atomic_write_bytes(path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
