"""EDM denoising loss and per-sample weighted denoising error (Karras et al. 2022, Sec. 5 and Table 1).

The per-sample error  E(x) = sum_pixels lambda(sigma)·(D(x + sigma·n; sigma) - x)^2  is both the EDM
pretraining loss (summed over C·H·W; the caller averages over the batch) and, with the sign flipped,
the pseudo-log-likelihood whose theta-minus-ref difference is the DDO log-ratio (Zheng et al. 2025,
Eqs. 14-15). Since lambda·c_out^2 = 1, lambda·||D - x||^2 = ||F - F_target||^2 for EDM preconditioning.
All randomness (sigma via a standard-normal z, the noise n) is passed in so theta and ref share it.
"""
from __future__ import annotations

import torch

P_MEAN = -1.2  # EDM CIFAR-10 log-normal sigma distribution
P_STD = 1.2
SIGMA_DATA = 0.5


def sample_sigma(z: torch.Tensor, P_mean: float = P_MEAN, P_std: float = P_STD) -> torch.Tensor:
    """Log-normal noise levels ln sigma ~ N(P_mean, P_std^2) from standard-normal draws z: [B] -> sigma [B]."""
    if z.ndim != 1 or not z.is_floating_point():
        raise ValueError(f"sample_sigma: z must be a floating [B] tensor, found {z.dtype} {list(z.shape)}")
    if P_std < 0:
        raise ValueError(f"sample_sigma: P_std must be >= 0, found {P_std}")
    return torch.exp(P_mean + P_std * z)


def edm_weight(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """EDM loss weight lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma·sigma_data)^2, elementwise."""
    return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2


def _check_inputs(x: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor,
                  labels: torch.Tensor | None) -> None:
    if x.ndim != 4:
        raise ValueError(f"denoising_error: x must be [B, C, H, W], found {list(x.shape)}")
    if noise.shape != x.shape:
        raise ValueError(f"denoising_error: noise must match x {list(x.shape)}, found {list(noise.shape)}")
    if sigma.ndim != 1 or sigma.shape[0] != x.shape[0]:
        raise ValueError(f"denoising_error: sigma must be [B] = [{x.shape[0]}], found {list(sigma.shape)}")
    if labels is not None and (labels.ndim != 2 or labels.shape[0] != x.shape[0]):
        raise ValueError(f"denoising_error: labels must be [B, label_dim] with B = {x.shape[0]}, "
                         f"found {list(labels.shape)}")


def denoising_error(net: torch.nn.Module,
                    x: torch.Tensor,
                    sigma: torch.Tensor,
                    noise: torch.Tensor,
                    labels: torch.Tensor | None = None,
                    augment_labels: torch.Tensor | None = None,
                    *,
                    sigma_data: float | None = None) -> torch.Tensor:
    """Per-sample weighted denoising error sum_{C,H,W} lambda(sigma)·(D(x + sigma·noise; sigma) - x)^2: [B].

    x: [B, C, H, W] clean target; sigma: [B]; noise: [B, C, H, W] standard normal; labels: [B, label_dim]
    one-hot or None; augment_labels: [B, augment_dim] or None (not passed to the net when None).
    sigma_data defaults to `net.sigma_data`.
    """
    _check_inputs(x, sigma, noise, labels)
    sigma_data = net.sigma_data if sigma_data is None else sigma_data
    sigma = sigma.to(x.dtype).reshape(-1, 1, 1, 1)  # [B, 1, 1, 1]
    model_kwargs = {} if augment_labels is None else {"augment_labels": augment_labels}
    D_x = net(x + sigma * noise, sigma, labels, **model_kwargs)  # [B, C, H, W]
    weight = edm_weight(sigma, sigma_data)  # [B, 1, 1, 1]
    return (weight * (D_x - x) ** 2).sum(dim=(1, 2, 3))  # [B]


def edm_loss(net: torch.nn.Module,
             x: torch.Tensor,
             labels: torch.Tensor | None,
             sigma: torch.Tensor,
             noise: torch.Tensor,
             augment_labels: torch.Tensor | None = None) -> torch.Tensor:
    """EDM pretraining loss per sample, summed over C·H·W: [B] (EDMLoss; the caller takes the batch mean).

    x is the (augmented) training image y in [-1, 1]; sigma from `sample_sigma`; noise ~ N(0, I).
    The official per-element loss summed over pixels; the logged EDM statistic is this divided by C·H·W.
    """
    return denoising_error(net, x, sigma, noise, labels, augment_labels)
