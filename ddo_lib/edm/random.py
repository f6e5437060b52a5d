"""Per-sample random generators for seed-reproducible sampling (Karras et al. 2022, EDM `generate.py` protocol).

Every row of a batch owns a `torch.Generator` seeded with `seed % 2**32`, so image i is a function of
seed i only, whatever the batch size, the batch composition or the number of processes. The draw order
per row is fixed: latents `randn[C, H, W]` first, then the class index `randint(label_dim)`, then the
sampler's noise tensors in the order the sampler asks for them.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

SEED_MODULUS = 2**32


class StackedGenerators:
    """One `torch.Generator` per batch row; every draw is made row by row and stacked to [N, ...]."""

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        seeds = [int(seed) for seed in seeds]
        if not seeds:
            raise ValueError("StackedGenerators: expected at least one seed, found an empty sequence")
        self.seeds = seeds
        self.device = torch.device(device)
        self.generators = [torch.Generator(self.device).manual_seed(seed % SEED_MODULUS) for seed in seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape_per_row: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard normal draws, [N, *shape_per_row]; row i comes from generator i."""
        rows = [torch.randn(list(shape_per_row), generator=g, dtype=dtype, device=self.device) for g in self.generators]
        return torch.stack(rows)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """Standard normal draws shaped like x: [N, ...] with N = number of generators, x's dtype and device."""
        if x.shape[0] != len(self):
            raise ValueError(f"randn_like: x has batch {x.shape[0]}, but there are {len(self)} generators")
        if x.device != self.device:
            raise ValueError(f"randn_like: x is on {x.device}, the generators on {self.device}")
        return self.randn(x.shape[1:], dtype=x.dtype)

    def randint(self, high: int) -> torch.Tensor:
        """One integer in [0, high) per row, int64 [N]."""
        if high <= 0:
            raise ValueError(f"randint: expected high > 0, found {high}")
        rows = [torch.randint(high, size=[], generator=g, device=self.device) for g in self.generators]
        return torch.stack(rows)


class LatentsAndLabels(NamedTuple):
    """Initial draws for a batch of seeds; `generators` continue the per-row streams for the sampler."""

    generators: StackedGenerators
    latents: torch.Tensor  # [N, C, H, W] float32
    class_idx: torch.Tensor | None  # [N] int64, None when label_dim == 0
    labels: torch.Tensor | None  # [N, label_dim] one-hot float32, None when label_dim == 0


def one_hot_labels(class_idx: torch.Tensor, label_dim: int) -> torch.Tensor:
    """Class indices [N] -> one-hot float32 labels [N, label_dim]."""
    if class_idx.dtype not in (torch.int32, torch.int64) or class_idx.ndim != 1:
        raise ValueError(f"one_hot_labels: expected int64 [N], found {class_idx.dtype} {list(class_idx.shape)}")
    if class_idx.numel() and (class_idx.min() < 0 or class_idx.max() >= label_dim):
        raise ValueError(f"one_hot_labels: class indices must lie in [0, {label_dim}), found "
                         f"[{int(class_idx.min())}, {int(class_idx.max())}]")
    return torch.eye(label_dim, device=class_idx.device)[class_idx]


def latents_and_labels(seeds: Sequence[int],
                       shape: Sequence[int],
                       label_dim: int,
                       device: torch.device | str = "cpu") -> LatentsAndLabels:
    """Per-seed latents randn[C, H, W] (float32), then a class index randint(label_dim), one-hot."""
    if len(shape) != 3:
        raise ValueError(f"latents_and_labels: shape must be [C, H, W], found {list(shape)}")
    if label_dim < 0:
        raise ValueError(f"latents_and_labels: label_dim must be >= 0, found {label_dim}")
    generators = StackedGenerators(seeds, device)
    latents = generators.randn(shape, dtype=torch.float32)  # [N, C, H, W]
    if label_dim == 0:
        return LatentsAndLabels(generators, latents, None, None)
    class_idx = generators.randint(label_dim)  # [N]
    return LatentsAndLabels(generators, latents, class_idx, one_hot_labels(class_idx, label_dim))
