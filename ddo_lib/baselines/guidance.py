"""Discriminator Guidance (Kim et al. 2022, ICML 2023, arXiv 2211.17091; docs/theory.md §6).

A time-dependent discriminator d_φ(x_σ, σ) is trained *after* the score model with BCE on noisy real
against noisy generated images (Kim et al. 2022):

    L_φ = E_σ [ E_data −log d_φ(x + σn, σ) + E_model −log(1 − d_φ(x + σn, σ)) ].

At the optimum d* = p_σ^data / (p_σ^data + p_σ^model), so its logit λ = log(d/(1 − d)) is the log
density ratio of the noisy marginals and ∇_x λ corrects the model score to the data score. In EDM's
denoiser form (score = (D − x)/σ²) the corrected denoiser is

    D̃(x; σ) = D(x; σ) + w·σ²·∇_x λ_φ(x, σ),                                     (DG correction in D-form)

w = 1 being exact at the optimal discriminator; DG's CIFAR-10 commands use w = 2 (uncond) and w = 1
(cond). `GuidedDenoiser` wraps any preconditioned EDM net with this correction and keeps its call
signature, so `ddo_lib.edm.sampler.generate` samples from it unchanged.

Inference cost: every network evaluation (NFE) of the sampler also runs one discriminator forward
*and* backward pass (autograd ∇_x λ), i.e. roughly 3× a discriminator forward per NFE on top of the
denoiser; `measure_guidance_cost` times guided against unguided sampling. The official DG sampler
corrects only the first-order (Euler) derivative of each Heun step (dg_weight_2nd_order = 0), i.e. 18
discriminator gradients for 35 NFE, which is the DDO paper's "EDM + DG at 53 NFE" (= 35 + 18; Zheng
et al. 2025, Table 1). A denoiser wrapper cannot tell the two Heun evaluations apart, so this one
corrects both (35 gradients): a slightly different, more expensive discretisation of the same ODE.

The discriminator here is trained on pixels from scratch (a small conv net, noise embedding
c_noise = ln(σ)/4 as in EDM, optional class embedding); DG itself puts a small head on a frozen
pretrained ADM classifier encoder (official DG, `alsdudrla10/DG`).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ddo_lib.data import to_float
from ddo_lib.edm.sampler import generate
from ddo_lib.seeds import STREAM_DISCRIMINATOR, step_generator

logger = logging.getLogger(__name__)

SIGMA_DISTRIBUTIONS = ("lognormal", "loguniform")
DENOISER_ATTRIBUTES = ("img_resolution", "img_channels", "label_dim", "sigma_min", "sigma_max", "sigma_data",
                       "use_fp16")


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
    """Training of the time-dependent discriminator (DG `train.py` defaults in comments)."""

    steps: int = 1000                      # Adam steps (DG: 50 epochs of 50k + 50k images)
    batch_size: int = 64                   # real rows per step, plus as many fake rows (DG: 128)
    lr: float = 1e-3                       # Adam learning rate (DG: 3e-4 for a head on frozen features)
    weight_decay: float = 1e-7             # DG: 1e-7
    width: int = 32                        # channels of the first conv stage (the second has 2×)
    sigma_distribution: str = "loguniform" # 'loguniform' on [sigma_min, sigma_max] or EDM 'lognormal'
    sigma_min: float = 0.002               # log-uniform range = the EDM sampler's range
    sigma_max: float = 80.0
    P_mean: float = -1.2                   # log-normal ln σ ~ N(P_mean, P_std²) (EDM Table 1)
    P_std: float = 1.2
    sigma_data: float = 0.5                # input scaling c_in = 1/sqrt(σ² + σ_data²)
    seed: int = 0                          # initialisation and every draw of every step
    log_every: int = 50                    # history interval (steps)

    def __post_init__(self):
        if self.sigma_distribution not in SIGMA_DISTRIBUTIONS:
            raise ValueError(f"sigma_distribution must be one of {SIGMA_DISTRIBUTIONS}, "
                             f"found {self.sigma_distribution!r}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, found {self.sigma_min}, {self.sigma_max}")
        for name in ("steps", "batch_size", "width", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, found {getattr(self, name)}")


# ----------------------------------------------------------------------------------------------------
# The discriminator network.

class _FiLMBlock(nn.Module):
    """Residual conv block whose GroupNorm output is scaled and shifted by the noise/class embedding."""

    def __init__(self, channels: int, embedding_dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(min(8, channels), channels)
        self.affine = nn.Linear(embedding_dim, 2 * channels)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, h: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        scale, shift = self.affine(embedding)[:, :, None, None].chunk(2, dim=1)  # [N, ch, 1, 1] each
        return h + self.conv(F.silu(self.norm(h) * (1 + scale) + shift))         # [N, ch, H, W]


class NoisyDiscriminator(nn.Module):
    """Time-dependent discriminator d_φ(x_σ, σ, label) -> logit λ [N] (Kim et al. 2022).

    x: [N, C, R, R] noisy image in data units; sigma: scalar, [N] or [N, 1, 1, 1]; class_labels: None,
    one-hot [N or 1, L] or int64 [N]. The input is scaled by c_in = 1/sqrt(σ² + σ_data²) and the noise
    level enters as c_noise = ln(σ)/4 (EDM Table 1) through an MLP. Rows are independent (GroupNorm, no
    BatchNorm), so Σ_rows λ has the per-row input gradients ∇_x λ.
    """

    def __init__(self, *, channels: int, resolution: int, label_dim: int = 0, width: int = 32,
                 embedding_dim: int = 64, sigma_data: float = 0.5):
        super().__init__()
        self.img_channels, self.img_resolution, self.label_dim = channels, resolution, label_dim
        self.width, self.sigma_data = width, sigma_data
        self.embed_noise = nn.Sequential(nn.Linear(1, embedding_dim), nn.SiLU(),
                                         nn.Linear(embedding_dim, embedding_dim))
        self.embed_label = nn.Linear(label_dim, embedding_dim, bias=False) if label_dim else None
        self.stem = nn.Conv2d(channels, width, 3, padding=1)
        self.block1 = _FiLMBlock(width, embedding_dim)
        self.down = nn.Conv2d(width, 2 * width, 3, padding=1, stride=2)
        self.block2 = _FiLMBlock(2 * width, embedding_dim)
        self.head = nn.Linear(2 * width, 1)

    def _labels(self, class_labels: torch.Tensor | None, batch: int, device) -> torch.Tensor | None:
        """None -> zeros (label_dim > 0); int [N] -> one-hot; float [N or 1, L] -> f32."""
        if self.label_dim == 0:
            if class_labels is not None:
                raise ValueError("discriminator: class_labels given, but label_dim = 0")
            return None
        if class_labels is None:
            return torch.zeros(1, self.label_dim, device=device)
        if not class_labels.is_floating_point():
            return F.one_hot(class_labels.long(), self.label_dim).to(device, torch.float32)
        if class_labels.ndim != 2 or class_labels.shape[1] != self.label_dim or class_labels.shape[0] not in (1, batch):
            raise ValueError(f"discriminator: class_labels must be [{batch} or 1, {self.label_dim}] one-hot or "
                             f"int64 [{batch}], found {list(class_labels.shape)}")
        return class_labels.to(device, torch.float32)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        expected = [self.img_channels, self.img_resolution, self.img_resolution]
        if x.ndim != 4 or list(x.shape[1:]) != expected:
            raise ValueError(f"discriminator: x must be [N, {', '.join(map(str, expected))}], found {list(x.shape)}")
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32).reshape(-1, 1)  # [N or 1, 1]
        if sigma.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"discriminator: sigma must have 1 or {x.shape[0]} values, found {sigma.shape[0]}")
        embedding = self.embed_noise(sigma.log() / 4).expand(x.shape[0], -1)  # [N, E]
        labels = self._labels(class_labels, x.shape[0], x.device)
        if labels is not None:
            embedding = embedding + self.embed_label(labels)                  # [N, E]
        c_in = (sigma ** 2 + self.sigma_data ** 2).rsqrt()[:, :, None, None]  # [N or 1, 1, 1, 1]
        h = self.block1(self.stem(c_in * x), embedding)                       # [N, w, R, R]
        h = self.block2(self.down(F.silu(h)), embedding)                      # [N, 2w, R/2, R/2]
        return self.head(F.silu(h).mean(dim=(2, 3))).squeeze(1)               # [N]


# ----------------------------------------------------------------------------------------------------
# Training.

def draw_sigma(generator: torch.Generator, num: int, cfg: DiscriminatorConfig) -> torch.Tensor:
    """Noise levels [num] from cfg.sigma_distribution: log-uniform on [sigma_min, sigma_max] or log-normal."""
    if cfg.sigma_distribution == "lognormal":
        return torch.exp(cfg.P_mean + cfg.P_std * torch.randn(num, generator=generator))
    low, high = math.log(cfg.sigma_min), math.log(cfg.sigma_max)
    return torch.exp(low + (high - low) * torch.rand(num, generator=generator))


def _check_images(name: str, images: torch.Tensor, shape: Sequence[int] | None = None) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4 or len(images) == 0:
        found = f"{images.dtype} {list(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name}: expected uint8 [N >= 1, C, H, W], found {found}")
    if shape is not None and tuple(images.shape[1:]) != tuple(shape):
        raise ValueError(f"{name}: expected images of shape {list(shape)}, found {list(images.shape[1:])}")


def _check_labels(name: str, labels: torch.Tensor | None, num: int, label_dim: int) -> torch.Tensor | None:
    """int labels [num] in [0, label_dim) when label_dim > 0; ignored (None) when label_dim = 0."""
    if label_dim == 0:
        return None
    if labels is None or labels.shape != (num,) or labels.is_floating_point():
        raise ValueError(f"{name}: label_dim = {label_dim} needs int64 labels [{num}], found "
                         f"{None if labels is None else (labels.dtype, list(labels.shape))}")
    if labels.min() < 0 or labels.max() >= label_dim:
        raise ValueError(f"{name}: labels must lie in [0, {label_dim}), found [{labels.min()}, {labels.max()}]")
    return labels.long()


def bce_terms(logit_real: torch.Tensor, logit_fake: torch.Tensor) -> torch.Tensor:
    """Per-pair discriminator BCE −log σ(λ_real) − log σ(−λ_fake): [B] (DG loss L_φ, Kim et al. 2022)."""
    return F.softplus(-logit_real) + F.softplus(logit_fake)


def train_discriminator(
    real: torch.Tensor,                      # uint8 [N, C, H, W] data images
    fake: torch.Tensor,                      # uint8 [M, C, H, W] model samples (DDO's fake pool)
    *,
    real_labels: torch.Tensor | None = None, # int64 [N] (needed when label_dim > 0)
    fake_labels: torch.Tensor | None = None, # int64 [M]
    label_dim: int = 0,                      # 0 = unconditional discriminator
    cfg: DiscriminatorConfig = DiscriminatorConfig(),
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> tuple[NoisyDiscriminator, list[dict]]:
    """Train d_φ with BCE on noisy real (1) against noisy fake (0) images (DG loss L_φ, Kim et al. 2022).

    Step s draws, from `step_generator(cfg.seed, s, STREAM_DISCRIMINATOR)` only: B real and B fake indices (with
    replacement), one σ per pair shared by real row i and fake row i, and independent noise. Images
    map to [−1, 1] as in DDO's trainer. Deterministic given cfg.seed on CPU. Returns the network (eval
    mode, frozen) and a history of {step, loss, accuracy} averaged over each `log_every` window (loss
    is the BCE per image, log 2 ≈ 0.693 at chance; accuracy counts λ > 0 on real and λ < 0 on fake).
    """
    _check_images("real", real)
    _check_images("fake", fake, real.shape[1:])
    real_labels = _check_labels("real_labels", real_labels, len(real), label_dim)
    fake_labels = _check_labels("fake_labels", fake_labels, len(fake), label_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = NoisyDiscriminator(channels=real.shape[1], resolution=real.shape[-1], label_dim=label_dim,
                                 width=cfg.width, sigma_data=cfg.sigma_data).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history, window = [], []
    for step in tqdm(range(cfg.steps), disable=not progress, desc="discriminator"):
        generator = step_generator(cfg.seed, step, STREAM_DISCRIMINATOR)
        real_index = torch.randint(len(real), (cfg.batch_size,), generator=generator)
        fake_index = torch.randint(len(fake), (cfg.batch_size,), generator=generator)
        sigma = draw_sigma(generator, cfg.batch_size, cfg).repeat(2)                # [2B]
        x = torch.cat([to_float(real[real_index]), to_float(fake[fake_index])])    # [2B, C, H, W]
        x = x + sigma[:, None, None, None] * torch.randn(x.shape, generator=generator)
        labels = None if label_dim == 0 else torch.cat([real_labels[real_index], fake_labels[fake_index]])
        logit = net(x.to(device), sigma.to(device), None if labels is None else labels.to(device))  # [2B]
        loss = bce_terms(logit[:cfg.batch_size], logit[cfg.batch_size:]).mean() / 2  # per image; log 2 at chance
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        accuracy = torch.cat([logit[:cfg.batch_size] > 0, logit[cfg.batch_size:] < 0]).float().mean()
        window.append((loss.item(), accuracy.item()))
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            history.append(dict(step=step + 1, loss=sum(w[0] for w in window) / len(window),
                                accuracy=sum(w[1] for w in window) / len(window)))
            logger.debug("discriminator step %d: %s", step + 1, history[-1])
            window = []
    return net.eval().requires_grad_(False), history


@torch.no_grad()
def discriminator_logits(discriminator: nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None, *,
                         sigma: float, batch_size: int = 500) -> torch.Tensor:
    """Logits λ(x, σ) [N] of clean uint8 images [N, C, H, W] at a fixed σ, without adding noise.

    Used by seasoning's `refine_images`: at a small σ (e.g. the low end of the training range) λ
    estimates log p_data(x)/p_model(x) of the clean images.
    """
    _check_images("images", images)
    labels = _check_labels("labels", labels, len(images), discriminator.label_dim)
    device = next(discriminator.parameters()).device
    parts = []
    for start in range(0, len(images), batch_size):
        rows = slice(start, start + batch_size)
        row_labels = None if labels is None else labels[rows].to(device)
        parts.append(discriminator(to_float(images[rows]).to(device), sigma, row_labels).float().cpu())
    return torch.cat(parts)


# ----------------------------------------------------------------------------------------------------
# Guided sampling.

class GuidedDenoiser(nn.Module):
    """D̃(x; σ) = D(x; σ) + w·σ²·∇_x λ_φ(x, σ) (Kim et al. 2022, written for EDM's denoiser).

    Same call signature and attributes as the wrapped preconditioned net, so the EDM samplers use it
    unchanged. The gradient is taken with autograd under `torch.enable_grad()` (the samplers run under
    `no_grad`); pass a frozen discriminator (`requires_grad_(False)`) to keep its weights out of the
    graph. Guidance acts only for σ in [sigma_low, sigma_high] (DG applies it for VP time τ ∈ [0.01, 1]);
    `logit_clip` bounds |λ| as DG's clip of d to [1e-5, 1 − 1e-5] does (≈ 11.5; the gradient is zero
    where the bound is active). weight = 0 returns D exactly and never calls the discriminator.
    """

    def __init__(self, net: nn.Module, discriminator: nn.Module, weight: float, *,
                 sigma_low: float = 0.0,                # guidance window, lower end
                 sigma_high: float = float("inf"),      # guidance window, upper end
                 logit_clip: float | None = None):      # |λ| bound (DG: log((1 − 1e-5)/1e-5))
        super().__init__()
        if not math.isfinite(weight):
            raise ValueError(f"GuidedDenoiser: weight must be finite, found {weight}")
        if discriminator.label_dim not in (0, net.label_dim):
            raise ValueError(f"GuidedDenoiser: discriminator label_dim {discriminator.label_dim} must be 0 or the "
                             f"net's label_dim {net.label_dim}")
        if logit_clip is not None and not logit_clip > 0:
            raise ValueError(f"GuidedDenoiser: logit_clip must be > 0 or None, found {logit_clip}")
        self.net, self.discriminator, self.weight = net, discriminator, float(weight)
        self.sigma_low, self.sigma_high, self.logit_clip = float(sigma_low), float(sigma_high), logit_clip
        for name in DENOISER_ATTRIBUTES:
            if hasattr(net, name):
                setattr(self, name, getattr(net, name))

    def round_sigma(self, sigma: torch.Tensor | float) -> torch.Tensor:
        return self.net.round_sigma(sigma)

    def logit_gradient(self, x: torch.Tensor, sigma: torch.Tensor | float,
                       class_labels: torch.Tensor | None) -> torch.Tensor:
        """∇_x λ_φ(x, σ): [N, C, H, W] in x's dtype (one discriminator forward + backward)."""
        labels = class_labels if self.discriminator.label_dim else None
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            logit = self.discriminator(x_in, sigma, labels)  # [N]
            if self.logit_clip is not None:
                logit = logit.clamp(-self.logit_clip, self.logit_clip)
            (gradient,) = torch.autograd.grad(logit.sum(), x_in)
        return gradient

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """x: [N, C, H, W]; sigma: scalar, [N] or [N, 1, 1, 1]; labels as the wrapped net takes them."""
        D_x = self.net(x, sigma, class_labels)  # [N, C, H, W]
        if self.weight == 0:
            return D_x
        sigma_rows = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1, 1, 1, 1)  # [N or 1, ...]
        active = (sigma_rows >= self.sigma_low) & (sigma_rows <= self.sigma_high)
        if not bool(active.any()):
            return D_x
        correction = self.weight * sigma_rows ** 2 * self.logit_gradient(x, sigma, class_labels) * active
        return D_x + correction.to(D_x.dtype)  # [N, C, H, W]


def _timed_generate(net: nn.Module, seeds: list[int], labels, batch_size: int, num_steps: int) -> float:
    device = next(net.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    generate(net, seeds, labels, batch_size=batch_size, num_steps=num_steps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure_guidance_cost(guided: GuidedDenoiser, seeds: Sequence[int], labels: torch.Tensor | None = None, *,
                          batch_size: int, num_steps: int = 18, repeats: int = 3) -> dict[str, float]:
    """Wall time of `generate` with guidance against the wrapped net alone (best of `repeats` interleaved runs
    after a warm-up).

    Returns seconds per image guided / unguided, their ratio, the NFE (2N − 1) and the extra seconds
    per image per NFE spent in the discriminator's forward + backward.
    """
    seeds = [int(seed) for seed in seeds]
    if guided.weight == 0:
        raise ValueError("measure_guidance_cost: weight 0 never calls the discriminator; use weight != 0")
    warm = seeds[:min(len(seeds), batch_size)]
    for net in (guided.net, guided):
        _timed_generate(net, warm, None if labels is None else labels[:len(warm)], batch_size, 2)
    times = [[], []]  # unguided, guided; interleaved so that a change of machine load hits both
    for _ in range(repeats):
        for times_of, net in zip(times, (guided.net, guided)):
            times_of.append(_timed_generate(net, seeds, labels, batch_size, num_steps))
    unguided, with_guidance = min(times[0]), min(times[1])
    nfe = 2 * num_steps - 1
    return dict(images=len(seeds), nfe=nfe, seconds_per_image_unguided=unguided / len(seeds),
                seconds_per_image_guided=with_guidance / len(seeds), ratio=with_guidance / unguided,
                extra_seconds_per_image_per_nfe=(with_guidance - unguided) / len(seeds) / nfe)
