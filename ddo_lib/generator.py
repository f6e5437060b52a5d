"""The generator protocol that joins model families to the DDO trainer (DESIGN §3).

The objective knows nothing of models, models know nothing of DDO; the trainer talks to a family
through these three calls. All randomness is an argument, so θ and ref see the same draws.
"""
from __future__ import annotations

from typing import Protocol, Sequence

import torch


class Family(Protocol):
    """A model family (EDM, EDM2, VAR) as seen by the DDO trainer."""

    name: str

    def sample(self, net: torch.nn.Module, seeds: Sequence[int], labels: torch.Tensor | None,
               **sampler) -> torch.Tensor:
        """uint8 images [N, C, H, W]; image i depends only on seed i."""

    def draw(self, generator: torch.Generator, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The random inputs of one log-ratio / MLE evaluation for a batch x (e.g. sigma and noise)."""

    def log_ratio(self, net: torch.nn.Module, ref: torch.nn.Module, x: torch.Tensor,
                  labels: torch.Tensor | None, draws: dict[str, torch.Tensor]) -> torch.Tensor:
        """Estimate of log p_θ(x) − log p_ref(x): float [N]; gradients flow into `net` only."""

    def mle_loss(self, net: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor | None,
                 draws: dict[str, torch.Tensor]) -> torch.Tensor:
        """The family's pretraining loss per sample: float [N]."""


_FAMILIES: dict[str, type] = {}


def register(name: str):
    """Class decorator adding a family under `name`."""
    def wrap(cls):
        _FAMILIES[name] = cls
        cls.name = name
        return cls
    return wrap


def get_family(name: str, **options) -> Family:
    """Instantiate the family registered as `name`."""
    if name not in _FAMILIES:
        raise ValueError(f"unknown model family {name!r}; registered: {sorted(_FAMILIES)}")
    return _FAMILIES[name](**options)
