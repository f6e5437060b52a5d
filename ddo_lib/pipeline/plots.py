"""Matplotlib figures written as PNG files, and histories as CSV files (DVC plots)."""
from __future__ import annotations

import csv
import io
import pathlib
from typing import Sequence

import einops
import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ddo_lib.checkpoint import atomic_write_bytes  # noqa: E402


def grid_image(images: torch.Tensor, nrow: int) -> torch.Tensor:
    """Tile uint8 images [N, C, H, W] into one [H*rows, W*nrow, C] array (N padded with black)."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"grid_image: expected uint8 [N, C, H, W], found {images.dtype} {tuple(images.shape)}")
    rows = -(-len(images) // nrow)
    padded = torch.zeros((rows * nrow, *images.shape[1:]), dtype=torch.uint8)
    padded[: len(images)] = images
    return einops.rearrange(padded, "(r q) c h w -> (r h) (q w) c", q=nrow)


def save_figure(figure, path) -> pathlib.Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return atomic_write_bytes(path, buffer.getvalue())


def save_image_grid(images: torch.Tensor, path, *, nrow: int = 10, title: str = "") -> pathlib.Path:
    """Save uint8 images [N, C, H, W] as one PNG grid (grey-scale when C == 1)."""
    grid = grid_image(images, nrow)
    figure, axis = plt.subplots(figsize=(nrow * 0.6 + 1, grid.shape[0] / grid.shape[1] * nrow * 0.6 + 1))
    axis.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255,
                interpolation="nearest")
    axis.set_axis_off()
    axis.set_title(title)
    return save_figure(figure, path)


def save_curves(history: Sequence[dict], path, *, x: str, ys: Sequence[str], title: str = "",
                logy: bool = False) -> pathlib.Path:
    """Line plot of the `ys` fields of a list of records against field `x`."""
    figure, axis = plt.subplots(figsize=(6, 3.5))
    for name in ys:
        points = [(row[x], row[name]) for row in history if row.get(name) is not None]
        if points:
            axis.plot(*zip(*points), label=name)
    axis.set_xlabel(x)
    axis.set_yscale("log" if logy else "linear")
    axis.legend()
    axis.set_title(title)
    axis.grid(alpha=0.3)
    return save_figure(figure, path)


def write_history_csv(path, history: Sequence[dict]) -> pathlib.Path:
    """A logged training history as CSV, one row per logged step (columns: the first row's keys)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    return atomic_write_bytes(path, buffer.getvalue().encode())
