"""Repository-relative paths (and the library's atomic writers, for the notebooks' convenience).

papermill runs a notebook in the caller's directory and JupyterLab in `notebooks/`; every path a
stage receives is resolved against the repository root so both behave the same.
"""
from __future__ import annotations

import os
import pathlib

from ddo_lib.checkpoint import atomic_write_bytes, write_json

__all__ = ["atomic_write_bytes", "repo_root", "resolve", "resolve_tree", "write_json"]


def repo_root(start: str | pathlib.Path | None = None) -> pathlib.Path:
    """The nearest ancestor of `start` (default: cwd) holding `dvc.yaml`, else the package's parent."""
    here = pathlib.Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    return pathlib.Path(__file__).resolve().parents[2]


def resolve(path: str | pathlib.Path) -> pathlib.Path:
    """An absolute path: relative paths are taken from the repository root."""
    path = pathlib.Path(path)
    return path if path.is_absolute() else repo_root() / path


def resolve_tree(value):
    """`resolve` applied to every string of a nested dict / list of paths (e.g. notebook 07's size_runs)."""
    if isinstance(value, dict):
        return {key: resolve_tree(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [resolve_tree(item) for item in value]
    return str(resolve(value))
