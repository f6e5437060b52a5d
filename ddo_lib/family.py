"""The generator protocol that joins model families to the DDO trainer, and what the trainer does to
any family's networks before a round (dropout off, same architecture, weights at their fixed point).

The objective knows nothing of models, models know nothing of DDO; the trainer talks to a family
through these calls. All randomness is an argument, so θ and ref see the same draws.
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

STOCHASTIC_RATES = ("dropout", "label_dropout", "attn_drop", "drop_prob")  # float attributes set to 0


def disable_dropout(net: torch.nn.Module) -> torch.nn.Module:
    """Every stochastic module of `net` off, in place: `nn.Dropout`, and float rates named in
    STOCHASTIC_RATES (EDM dropout and label dropout, VAR attention dropout and drop-path). DDO trains with
    dropout off (Zheng et al. 2025, App. C), so Δ is a deterministic function of x and the draws."""
    for module in net.modules():
        for name in STOCHASTIC_RATES:
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return net


def stochastic_modules(net: torch.nn.Module) -> list[str]:
    """Names of the modules of `net` that would draw random numbers in train mode (empty after
    `disable_dropout`)."""
    found = []
    for name, module in net.named_modules():
        rates = [getattr(module, rate, None) for rate in STOCHASTIC_RATES]
        if any(isinstance(r, float) and r > 0 for r in rates) or (isinstance(module, torch.nn.Dropout) and module.p > 0):
            found.append(name or type(net).__name__)
    return found


def renormalize_weights(net: torch.nn.Module) -> torch.nn.Module:
    """Apply EDM2's forced weight normalisation (Karras et al. 2024, Eq. 66) once, in place, to every
    magnitude-preserving layer of `net`; a no-op for EDM networks.

    EDM2 layers renormalise their stored weights on every forward in training mode. A reference whose
    weights are not yet at that fixed point (fresh initialisation, or rounding in a checkpoint) would
    give θ = copy(ref) a different output after θ's first training forward, so Δ ≠ 0 at θ = ref. Calling
    this on the reference first puts both at the fixed point (Δ at θ = ref then differs from 0 only by
    float rounding).
    """
    with torch.no_grad():
        for module in net.modules():
            if hasattr(module, "renormalize_weight_"):
                module.renormalize_weight_()
    return net


def check_same_architecture(net: torch.nn.Module, ref: torch.nn.Module) -> None:
    """θ and ref must have identical state_dict keys and shapes (θ is initialised from ref)."""
    a, b = net.state_dict(), ref.state_dict()
    if list(a) != list(b) or any(a[k].shape != b[k].shape for k in a):
        diff = sorted(set(a) ^ set(b))[:5] or [k for k in a if a[k].shape != b[k].shape][:5]
        raise ValueError(f"θ and ref have different architectures (first differences: {diff}); "
                         f"DDO needs θ initialised from ref")
