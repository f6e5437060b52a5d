"""EDM Heun samplers (Karras et al. 2022, Alg. 2) and the EDM2 variant with guidance (Karras et al. 2024).

Two samplers share one loop shape but differ in arithmetic, as the official scripts do:
- `edm_sampler` (EDM `generate.py`): float64 state, sigmas passed through `net.round_sigma` and clamped to
  [net.sigma_min, net.sigma_max], and one `randn_like` draw at *every* step (scaled by 0 outside churn).
- `edm2_sampler` (EDM2 `generate_images.py`): `dtype` (float32) state, no rounding or clamping, noise drawn
  only inside the churn window, and the guided denoiser lerp(D_gnet, D_net, guidance).
Both use NFE = 2N - 1. `generate` turns seeds into uint8 images with per-sample generators.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from ddo_lib.data import to_uint8
from ddo_lib.edm.random import latents_and_labels, one_hot_labels

logger = logging.getLogger(__name__)

StepCallback = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]
RandnLike = Callable[[torch.Tensor], torch.Tensor]


def time_steps(num_steps: int,
               sigma_min: float = 0.002,
               sigma_max: float = 80.0,
               rho: float = 7.0,
               *,
               dtype: torch.dtype = torch.float64,
               device: torch.device | str = "cpu",
               round_sigma: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """EDM noise levels t_i = (sigma_max^(1/rho) + i/(N-1)·(sigma_min^(1/rho) - sigma_max^(1/rho)))^rho (Eq. 5), then t_N = 0.

    Returns [N + 1] in `dtype`; `round_sigma` (if given) is applied to t_0..t_{N-1}.
    """
    if num_steps < 2:
        raise ValueError(f"time_steps: num_steps must be >= 2 (the formula divides by N - 1), found {num_steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"time_steps: need 0 < sigma_min < sigma_max, found {sigma_min}, {sigma_max}")
    step_indices = torch.arange(num_steps, dtype=dtype, device=device)  # [N]
    inv_rho_max, inv_rho_min = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    t_steps = (inv_rho_max + step_indices / (num_steps - 1) * (inv_rho_min - inv_rho_max)) ** rho  # [N]
    if round_sigma is not None:
        t_steps = round_sigma(t_steps)
    return torch.cat([t_steps, torch.zeros_like(t_steps[:1])])  # [N + 1]


def churn_gamma(t_cur: float, num_steps: int, S_churn: float, S_min: float, S_max: float) -> float:
    """Alg. 2 line 5: gamma_i = min(S_churn/N, sqrt(2) - 1) if S_min <= t_i <= S_max, else 0."""
    if S_min <= t_cur <= S_max:
        return min(S_churn / num_steps, math.sqrt(2) - 1)
    return 0.0


def _check_latents(net: torch.nn.Module, latents: torch.Tensor, class_labels: torch.Tensor | None) -> None:
    expected = [net.img_channels, net.img_resolution, net.img_resolution]
    if latents.ndim != 4 or list(latents.shape[1:]) != expected:
        raise ValueError(f"sampler: latents must be [B, {', '.join(map(str, expected))}], found {list(latents.shape)}")
    if class_labels is not None and (class_labels.ndim != 2 or class_labels.shape[1] != net.label_dim
                                     or class_labels.shape[0] not in (1, latents.shape[0])):
        raise ValueError(f"sampler: class_labels must be [B or 1, {net.label_dim}] one-hot, "
                         f"found {list(class_labels.shape)}")


@torch.no_grad()
def edm_sampler(net: torch.nn.Module,
                latents: torch.Tensor,
                class_labels: torch.Tensor | None = None,
                *,
                num_steps: int = 18,               # N; NFE = 2N - 1
                sigma_min: float = 0.002,          # lowest noise level, clamped to net.sigma_min
                sigma_max: float = 80.0,           # highest noise level, clamped to net.sigma_max
                rho: float = 7.0,                  # time-step exponent
                S_churn: float = 0.0,              # total stochasticity; 0 = deterministic
                S_min: float = 0.0,                # churn window, lower end
                S_max: float = float("inf"),       # churn window, upper end
                S_noise: float = 1.0,              # noise inflation
                randn_like: RandnLike = torch.randn_like,
                callback: StepCallback | None = None,
                progress: bool = False) -> torch.Tensor:
    """EDM stochastic Heun sampler (Karras et al. 2022, Alg. 2), official float64 arithmetic.

    latents: [B, C, H, W] standard normal; class_labels: [B, label_dim] one-hot or None.
    `randn_like` is called once per step, even when gamma = 0 (EDM draws and multiplies by 0), so a
    per-sample generator stream stays aligned with the official one. `callback(i, t_cur, t_next, x_next)`
    runs after every step. Returns x_N: [B, C, H, W] float64.
    """
    _check_latents(net, latents, class_labels)
    sigma_min = max(sigma_min, net.sigma_min)
    sigma_max = min(sigma_max, net.sigma_max)
    t_steps = time_steps(num_steps, sigma_min, sigma_max, rho, dtype=torch.float64,
                         device=latents.device, round_sigma=net.round_sigma)  # [N + 1]

    x_next = latents.to(torch.float64) * t_steps[0]  # [B, C, H, W]
    steps = list(enumerate(zip(t_steps[:-1], t_steps[1:])))
    for i, (t_cur, t_next) in tqdm(steps, disable=not progress, desc="edm_sampler", leave=False):
        x_cur = x_next

        # Increase noise temporarily (churn); the draw happens at every step.
        gamma = churn_gamma(float(t_cur), num_steps, S_churn, S_min, S_max)
        t_hat = net.round_sigma(t_cur + gamma * t_cur)
        x_hat = x_cur + (t_hat ** 2 - t_cur ** 2).sqrt() * S_noise * randn_like(x_cur)

        # Euler step.
        D_hat = net(x_hat, t_hat, class_labels).to(torch.float64)
        d_cur = (x_hat - D_hat) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur

        # Apply 2nd order correction (not at the last step, where t_next = 0).
        if i < num_steps - 1:
            D_next = net(x_next, t_next, class_labels).to(torch.float64)
            d_prime = (x_next - D_next) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)

        if callback is not None:
            callback(i, t_cur, t_next, x_next)
    return x_next


def guided_denoiser(net: torch.nn.Module,
                    gnet: torch.nn.Module | None,
                    guidance: float,
                    labels: torch.Tensor | None,
                    dtype: torch.dtype) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """EDM2 guidance: D_g = D_gnet + guidance·(D_net - D_gnet) = lerp(D_gnet, D_net, guidance); guidance 1 skips gnet."""
    if guidance != 1 and gnet is None:
        raise ValueError(f"edm2_sampler: guidance={guidance} needs a guiding network gnet, found None")

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        D_x = net(x, t, labels).to(dtype)
        if guidance == 1:
            return D_x
        D_guide = gnet(x, t, labels if gnet.label_dim else None).to(dtype)  # CFG: an unconditional gnet
        return torch.lerp(D_guide, D_x, guidance)

    return denoise


@torch.no_grad()
def edm2_sampler(net: torch.nn.Module,
                 noise: torch.Tensor,
                 labels: torch.Tensor | None = None,
                 *,
                 gnet: torch.nn.Module | None = None,  # guiding network (CFG or autoguidance)
                 guidance: float = 1.0,             # 1 = no guidance
                 num_steps: int = 32,               # N; NFE = 2N - 1 per network
                 sigma_min: float = 0.002,          # lowest noise level (no clamping)
                 sigma_max: float = 80.0,           # highest noise level (no clamping)
                 rho: float = 7.0,                  # time-step exponent
                 S_churn: float = 0.0,              # total stochasticity; 0 = deterministic
                 S_min: float = 0.0,                # churn window, lower end
                 S_max: float = float("inf"),       # churn window, upper end
                 S_noise: float = 1.0,              # noise inflation
                 dtype: torch.dtype = torch.float32,
                 randn_like: RandnLike = torch.randn_like,
                 callback: StepCallback | None = None,
                 progress: bool = False) -> torch.Tensor:
    """EDM2 Heun sampler with guidance (Karras et al. 2024, `generate_images.py` semantics).

    noise: [B, C, H, W] standard normal; labels: [B, label_dim] one-hot or None.
    Arithmetic in `dtype`, no round_sigma and no sigma clamping; `randn_like` is called only when
    S_churn > 0 and S_min <= t_i <= S_max. Returns x_N: [B, C, H, W] in `dtype`.
    """
    _check_latents(net, noise, labels)
    denoise = guided_denoiser(net, gnet, guidance, labels, dtype)
    t_steps = time_steps(num_steps, sigma_min, sigma_max, rho, dtype=dtype, device=noise.device)  # [N + 1]

    x_next = noise.to(dtype) * t_steps[0]  # [B, C, H, W]
    steps = list(enumerate(zip(t_steps[:-1], t_steps[1:])))
    for i, (t_cur, t_next) in tqdm(steps, disable=not progress, desc="edm2_sampler", leave=False):
        x_cur = x_next

        # Increase noise temporarily, only inside the churn window.
        if S_churn > 0 and S_min <= t_cur <= S_max:
            gamma = min(S_churn / num_steps, math.sqrt(2) - 1)
            t_hat = t_cur + gamma * t_cur
            x_hat = x_cur + (t_hat ** 2 - t_cur ** 2).sqrt() * S_noise * randn_like(x_cur)
        else:
            t_hat, x_hat = t_cur, x_cur

        # Euler step.
        d_cur = (x_hat - denoise(x_hat, t_hat)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur

        # Apply 2nd order correction.
        if i < num_steps - 1:
            d_prime = (x_next - denoise(x_next, t_next)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)

        if callback is not None:
            callback(i, t_cur, t_next, x_next)
    return x_next


def _resolve_labels(labels: torch.Tensor | None, drawn: torch.Tensor | None, label_dim: int,
                    num_seeds: int) -> torch.Tensor | None:
    """Caller labels (class indices [N] or one-hot [N, label_dim]) override the drawn ones."""
    if labels is None:
        return drawn
    if label_dim == 0:
        raise ValueError("generate: labels were given, but the network is unconditional (label_dim = 0)")
    if labels.shape[0] != num_seeds:
        raise ValueError(f"generate: labels must have one row per seed ({num_seeds}), found {list(labels.shape)}")
    if labels.ndim == 1:
        return one_hot_labels(labels, label_dim)
    if labels.ndim == 2 and labels.shape[1] == label_dim and labels.is_floating_point():
        return labels.to(torch.float32)
    raise ValueError(f"generate: labels must be int [N] class indices or float [N, {label_dim}] one-hot, "
                     f"found {labels.dtype} {list(labels.shape)}")


def _default_device(net: torch.nn.Module) -> torch.device:
    parameter = next(net.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@torch.no_grad()
def generate(net: torch.nn.Module,
             seeds: Sequence[int],
             labels: torch.Tensor | None = None,
             *,
             batch_size: int,
             sampler: str = "edm",
             device: torch.device | str | None = None,
             progress: bool = False,
             **sampler_kwargs) -> torch.Tensor:
    """Seeds -> uint8 images [N, C, H, W]; image i depends only on seed i (per-sample generators).

    Per seed: latents, then a class index (always drawn when label_dim > 0, as EDM does, so the churn
    noise stream is the same whether or not `labels` overrides it), then the sampler's noise.
    labels: None (use the drawn classes), int64 [N] class indices, or float [N, label_dim] one-hot.
    sampler: 'edm' (float64, `edm_sampler`) or 'edm2' (`edm2_sampler`); `sampler_kwargs` go to it.
    """
    samplers = {"edm": edm_sampler, "edm2": edm2_sampler}
    if sampler not in samplers:
        raise ValueError(f"generate: sampler must be one of {sorted(samplers)}, found {sampler!r}")
    if batch_size <= 0:
        raise ValueError(f"generate: batch_size must be > 0, found {batch_size}")
    seeds = [int(seed) for seed in seeds]
    if not seeds:
        raise ValueError("generate: expected at least one seed, found none")
    if labels is not None and labels.shape[0] != len(seeds):
        raise ValueError(f"generate: labels must have one row per seed ({len(seeds)}), found {list(labels.shape)}")
    device = torch.device(device) if device is not None else _default_device(net)
    shape = [net.img_channels, net.img_resolution, net.img_resolution]
    images = []
    batches = range(0, len(seeds), batch_size)
    for start in tqdm(batches, disable=not progress, desc="generate"):
        batch_seeds = seeds[start:start + batch_size]
        draws = latents_and_labels(batch_seeds, shape, net.label_dim, device)
        batch_labels = None if labels is None else labels[start:start + batch_size].to(device)
        batch_labels = _resolve_labels(batch_labels, draws.labels, net.label_dim, len(batch_seeds))
        x = samplers[sampler](net, draws.latents, batch_labels, randn_like=draws.generators.randn_like,
                              **sampler_kwargs)  # [b, C, H, W]
        images.append(to_uint8(x).cpu())
    logger.debug("generate: %d images with sampler %s, batch %d", len(seeds), sampler, batch_size)
    return torch.cat(images)  # [N, C, H, W] uint8
