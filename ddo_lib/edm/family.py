"""The EDM family behind the DDO generator protocol (Zheng et al. 2025, Eqs. 14–15).

log p_θ(x) − log p_ref(x) is estimated per sample by the difference of λ(σ)-weighted denoising errors
at one shared (σ, n) per row: Δ = −Σ_pixels λ(σ)·(‖D_θ(x + σn; σ) − x‖² − ‖D_ref(x + σn; σ) − x‖²).
"""
from __future__ import annotations

from typing import Sequence

import torch

from ddo_lib.edm.loss import denoising_error, sample_sigma
from ddo_lib.edm.sampler import generate


class EDMFamily:
    """EDM / EDM2 preconditioned denoisers; σ ~ log-normal(P_mean, P_std²)."""

    name = "edm"

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
