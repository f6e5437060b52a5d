"""The EDM family behind the DDO generator protocol (Zheng et al. 2025, Eqs. 14–15).

log p_θ(x) − log p_ref(x) is estimated per sample by the difference of λ(σ)-weighted denoising errors
at one shared (σ, n) per row: Δ = −Σ_pixels λ(σ)·(‖D_θ(x + σn; σ) − x‖² − ‖D_ref(x + σn; σ) − x‖²).
"""
from __future__ import annotations

from typing import Sequence

import torch

from ddo_lib.edm.loss import denoising_error, sample_sigma
from ddo_lib.edm.sampler import generate
from ddo_lib.generator import register


def disable_dropout(net: torch.nn.Module) -> torch.nn.Module:
    """Set every dropout rate in `net` to 0 (DDO App. C: dropout off for steady improvement)."""
    for module in net.modules():
        for name in ("dropout", "label_dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return net


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


@register("edm")
class EDMFamily:
    """EDM / EDM2 preconditioned denoisers; σ ~ log-normal(P_mean, P_std²)."""

    def __init__(self, *, P_mean: float = -1.2, P_std: float = 1.2, sampler: str = "edm",
                 num_steps: int = 18, batch_size: int = 256):
        self.P_mean, self.P_std = P_mean, P_std
        self.sampler, self.num_steps, self.batch_size = sampler, num_steps, batch_size

    def sample(self, net, seeds: Sequence[int], labels, **sampler) -> torch.Tensor:
        options = dict(num_steps=self.num_steps, **sampler)
        return generate(net, seeds, labels, batch_size=self.batch_size, sampler=self.sampler, **options)

    def draw(self, generator: torch.Generator, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = torch.randn(x.shape[0], generator=generator)                        # [B]
        noise = torch.randn(x.shape, generator=generator)                       # [B, C, H, W]
        return dict(sigma=sample_sigma(z, self.P_mean, self.P_std).to(x.device), noise=noise.to(x.device))

    def log_ratio(self, net, ref, x, labels, draws) -> torch.Tensor:
        sigma, noise, sigma_data = draws["sigma"], draws["noise"], ref.sigma_data
        error_theta = denoising_error(net, x, sigma, noise, labels, sigma_data=sigma_data)     # [B]
        with torch.no_grad():
            error_ref = denoising_error(ref, x, sigma, noise, labels, sigma_data=sigma_data)   # [B]
        return -(error_theta - error_ref)

    def mle_loss(self, net, x, labels, draws) -> torch.Tensor:
        sigma_data = getattr(net, "module", net).sigma_data  # unwrap DistributedDataParallel
        return denoising_error(net, x, draws["sigma"], draws["noise"], labels, sigma_data=sigma_data)
