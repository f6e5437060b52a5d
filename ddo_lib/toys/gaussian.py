"""Gaussian oracles: data and model N(mean, std²) i.i.d. per pixel, with everything exact.

The exact denoiser, the exact log-ratio of noisy data and model marginals (the logit of the optimal
discriminator, Kim et al. 2022), and the exact output moments of the EDM probability-flow ODE. Tests of
the EDM loss, Discriminator Guidance and the samplers check against them.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class GaussianDenoiser(nn.Module):
    """Exact denoiser of N(mean, std²) i.i.d. per pixel: D(x; σ) = mean + std²/(std² + σ²)·(x − mean).

    EDM call convention net(x, sigma, class_labels); computes in x's dtype (float64 in `edm_sampler`).
    """

    label_dim, sigma_min, sigma_max, use_fp16 = 0, 0.0, float("inf"), False

    def __init__(self, mean: float, std: float, *, img_channels: int = 1, img_resolution: int = 4):
        super().__init__()
        if not std > 0:
            raise ValueError(f"GaussianDenoiser: std must be > 0, found {std}")
        self.mean, self.std, self.sigma_data = float(mean), float(std), float(std)
        self.img_channels, self.img_resolution = img_channels, img_resolution

    def round_sigma(self, sigma: torch.Tensor | float) -> torch.Tensor:
        return torch.as_tensor(sigma)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, class_labels=None) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype).reshape(-1, 1, 1, 1)
        return self.mean + self.std ** 2 / (self.std ** 2 + sigma ** 2) * (x - self.mean)  # [N, C, H, W]


class GaussianLogRatio(nn.Module):
    """Oracle logit λ(x, σ) = Σ_pixels [log N(x; μ_d, s_d² + σ²) − log N(x; μ_m, s_m² + σ²)]: [N].

    The exact log density ratio of the noisy data and model marginals, i.e. the logit of the optimal
    discriminator d* (Kim et al. 2022). Computes in x's dtype.
    """

    label_dim = 0

    def __init__(self, data: GaussianDenoiser, model: GaussianDenoiser):
        super().__init__()
        self.data, self.model = (data.mean, data.std), (model.mean, model.std)

    @staticmethod
    def _log_normal(x: torch.Tensor, mean: float, variance: torch.Tensor) -> torch.Tensor:
        return -0.5 * ((x - mean) ** 2 / variance + torch.log(2 * math.pi * variance))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, class_labels=None) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype).reshape(-1, 1, 1, 1)
        log_data = self._log_normal(x, self.data[0], self.data[1] ** 2 + sigma ** 2)     # [N, C, H, W]
        log_model = self._log_normal(x, self.model[0], self.model[1] ** 2 + sigma ** 2)  # [N, C, H, W]
        return (log_data - log_model).flatten(1).sum(dim=1)                              # [N]


def gaussian_ode_moments(mean: float, std: float, sigma_max: float) -> tuple[float, float]:
    """Exact mean and std of the probability-flow ODE output for data N(mean, std²) started, as the EDM
    sampler is, from N(0, σ_max²) instead of the true marginal N(mean, std² + σ_max²).

    The ODE is linear: x(σ) − mean = (x(σ_max) − mean)·sqrt((std² + σ²)/(std² + σ_max²)).
    """
    shrink = std / math.sqrt(std ** 2 + sigma_max ** 2)
    return mean * (1 - shrink), sigma_max * shrink
