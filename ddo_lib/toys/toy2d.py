"""2-D toy study: mode covering (MLE) against discriminative DDO objectives (docs/theory.md §3, §4).

Targets are equal-weight isotropic Gaussian mixtures with an exact log-density: an 8-Gaussian ring
(radius 2) and a 25-Gaussian grid (spacing 1). Models have exact likelihoods and limited capacity:
- `GaussianMixture`: K < M diagonal Gaussians (learnable means, log-stds, logits);
- `GridAutoregressive`: x-bin categorical, then y-bin | x-bin from a small tanh MLP of the x-bin centre,
  uniform inside a bin, so log p(x) = log P(i_x) + log P(i_y | i_x) − 2·log(width) is a proper density.
Each is fitted by MLE (forward KL, mode covering), then refined by DDO self-play (Zheng et al. 2025,
Eq. 13 and Sec. 3): ref frozen, θ initialised from ref, fakes from ref, `ddo_loss` on the exact
log-ratio log p_θ − log p_ref, and ref ← θ after each round, for every f-divergence variant (docs/theory.md §3).
Hypothesis under test (docs/theory.md §4, §7; Shannon et al. 2020, arXiv 2010.08029): reverse-KL-like
critics (κ_f < 0) seek modes, `kl` at β = 1 behaves like MLE (docs/theory.md §4).

Randomness: every draw comes from a generator seeded by a stable hash of (seed, target, model, objective),
so a study is a pure function of its config.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import logging
import math
import zlib

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ddo_lib.eval.metrics import precision_recall
from ddo_lib.objective import VARIANTS, ddo_loss, reduce_loss

log = logging.getLogger(__name__)

TARGETS = ("ring", "grid")
MODELS = ("gmm", "ar")
DTYPE = torch.float64
TARGET_EXTENT = 2.0   # every target mean lies in [−2, 2]²
MODE_RADIUS = 3.0     # a sample "hits" a mode if it lies within 3σ of its mean (2-D: 98.9 % of its mass)
BOX_MARGIN = 6.0      # the AR grid must extend ≥ 6σ beyond the outermost mean
METRICS = ("forward_kl", "reverse_kl", "modes_covered", "precision", "recall", "knn_precision", "knn_recall")


@dataclasses.dataclass(frozen=True)
class Toy2DConfig:
    """The 2-D toy study (notebook 00, params.yaml section `toy2d`)."""

    targets: tuple[str, ...] = TARGETS     # 'ring' (8 modes), 'grid' (25 modes)
    models: tuple[str, ...] = MODELS       # 'gmm' (K < M components), 'ar' (grid autoregressive)
    variants: tuple[str, ...] = VARIANTS   # DDO objectives (ddo_lib.objective.VARIANTS)
    alphas: tuple[float, ...] = (1.0, 4.0)  # (α, β) settings, zipped: α = β = 1 is consistent (docs/theory.md §3);
    betas: tuple[float, ...] = (1.0, 0.1)   # small β with α > 1 is the paper's heuristic regime (Eq. 13)
    mle_control: bool = True               # also continue plain MLE for the same steps per round
    mode_std: float = 0.1                  # σ of every target mode
    ring_components: int = 4               # GMM components on the ring (8 modes)
    grid_components: int = 12              # GMM components on the grid (25 modes)
    ar_bins: int = 60                      # bins per axis of the AR model
    ar_hidden: int = 1                     # tanh units of the y | x MLP (1: cannot fit the ring, see class)
    box: float = 3.0                       # AR support [−box, box]²
    train_size: int = 20000                # real samples (MLE and the DDO real term)
    mle_steps: int = 1500                  # Adam steps of the MLE fit (lr decays linearly to 0)
    mle_lr: float = 0.05
    rounds: int = 3                        # DDO self-play rounds
    steps_per_round: int = 150             # Adam steps per round (fresh optimizer each round)
    pool_size: int = 20000                 # fakes drawn from ref per round
    batch_size: int = 512                  # real rows per step (and as many fakes)
    lr: float = 0.005                      # Adam learning rate of the rounds (and the MLE control)
    clamp: float = 10.0                    # |λ| cap inside exponential terms
    eval_size: int = 10000                 # Monte-Carlo samples per KL estimate
    knn_size: int = 1000                   # samples per side of the k-NN precision/recall
    cover_fraction: float = 0.2            # a mode is covered if it gets ≥ this share of 1/M of the samples
    heatmap_resolution: int = 48           # pixels per axis of the density heat-maps
    seed: int = 0

    def __post_init__(self) -> None:
        for name, allowed in (("targets", TARGETS), ("models", MODELS), ("variants", VARIANTS)):
            unknown = [v for v in getattr(self, name) if v not in allowed]
            if unknown or not getattr(self, name):
                raise ValueError(f"toy2d.{name}: expected a non-empty subset of {allowed}, found "
                                 f"{getattr(self, name)}")
        if len(self.alphas) != len(self.betas) or not self.alphas:
            raise ValueError(f"toy2d.alphas and toy2d.betas: expected non-empty lists of equal length, found "
                             f"{self.alphas} and {self.betas}")
        for name in ("ring_components", "grid_components", "ar_bins", "ar_hidden", "train_size",
                     "mle_steps", "rounds", "steps_per_round", "pool_size", "batch_size", "eval_size",
                     "knn_size", "heatmap_resolution"):
            if getattr(self, name) < 1:
                raise ValueError(f"toy2d.{name}: expected an integer >= 1, found {getattr(self, name)}")
        for name in ("mode_std", "mle_lr", "lr", "clamp", "cover_fraction"):
            if not getattr(self, name) > 0:
                raise ValueError(f"toy2d.{name}: expected a number > 0, found {getattr(self, name)}")
        if not all(value > 0 for value in self.alphas + self.betas):
            raise ValueError(f"toy2d.alphas/betas: expected numbers > 0, found {self.alphas} and {self.betas}")
        if self.box < TARGET_EXTENT + BOX_MARGIN * self.mode_std:
            raise ValueError(f"toy2d.box: must be >= {TARGET_EXTENT} + {BOX_MARGIN}·mode_std = "
                             f"{TARGET_EXTENT + BOX_MARGIN * self.mode_std:g} so no data falls outside the "
                             f"AR support, found {self.box}")

    def smoke(self) -> "Toy2DConfig":
        return dataclasses.replace(self, variants=("bce", "rkl"), ar_bins=24, train_size=2000,
                                   mle_steps=60, rounds=2, steps_per_round=10, pool_size=1000,
                                   batch_size=128, eval_size=1000, knn_size=300, heatmap_resolution=24)


@dataclasses.dataclass(frozen=True)
class Objective:
    """What a run optimises after the MLE fit: a DDO variant at (α, β), or 'mle' (the control)."""

    variant: str
    alpha: float | None = None
    beta: float | None = None

    @property
    def key(self) -> str:
        """'mle' or e.g. 'bce_a1_b0.1' (metrics keys, seeds)."""
        return self.variant if self.variant == "mle" else f"{self.variant}_a{self.alpha:g}_b{self.beta:g}"


@contextlib.contextmanager
def single_thread():
    """Run with one intra-op thread, then restore the count: these tiny models are dispatch-bound, and a
    second thread only adds synchronisation (about 5× slower on a busy 2-core machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def stable_generator(*key) -> torch.Generator:
    """A CPU generator seeded by a stable hash of `key` (not Python's salted hash)."""
    return torch.Generator().manual_seed(zlib.crc32("/".join(map(str, key)).encode()))


# --- Targets ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Target:
    """Equal-weight isotropic Gaussian mixture: means [M, 2], common std."""

    name: str
    means: torch.Tensor
    std: float


def make_target(name: str, std: float = 0.1) -> Target:
    """The 8-Gaussian ring (radius 2) or the 25-Gaussian grid ({−2, …, 2}²)."""
    if name == "ring":
        angles = torch.arange(8, dtype=DTYPE) * (2 * math.pi / 8)
        means = TARGET_EXTENT * torch.stack([angles.cos(), angles.sin()], dim=1)  # [8, 2]
    elif name == "grid":
        axis = torch.arange(-2, 3, dtype=DTYPE)
        means = torch.cartesian_prod(axis, axis)  # [25, 2]
    else:
        raise ValueError(f"unknown target {name!r}; expected one of {TARGETS}")
    return Target(name, means, float(std))


def _diagonal_normal_log_prob(x: torch.Tensor, means: torch.Tensor, log_stds: torch.Tensor) -> torch.Tensor:
    """log N(x; μ_k, diag σ_k²) for x [N, 2], means/log_stds [K, 2] -> [N, K]."""
    z = (x[:, None, :] - means[None]) / log_stds.exp()[None]  # [N, K, 2]
    return (-0.5 * z.square() - log_stds[None] - 0.5 * math.log(2 * math.pi)).sum(-1)


def target_log_prob(target: Target, x: torch.Tensor) -> torch.Tensor:
    """Exact log p_data(x) of points x [N, 2] -> [N]."""
    log_stds = torch.full_like(target.means, math.log(target.std))
    components = _diagonal_normal_log_prob(x.to(DTYPE), target.means, log_stds)  # [N, M]
    return torch.logsumexp(components, dim=1) - math.log(len(target.means))


def target_sample(target: Target, n: int, generator: torch.Generator) -> torch.Tensor:
    """n i.i.d. samples [n, 2]: a uniform mode, then Gaussian noise."""
    index = torch.randint(len(target.means), (n,), generator=generator)
    return target.means[index] + target.std * torch.randn(n, 2, generator=generator, dtype=DTYPE)


# --- Models -----------------------------------------------------------------------------------------

class GaussianMixture(torch.nn.Module):
    """K-component diagonal Gaussian mixture with exact log p and ancestral (reparameterised) sampling."""

    def __init__(self, means: torch.Tensor, std: float):
        super().__init__()
        self.means = torch.nn.Parameter(means.to(DTYPE).clone())                          # [K, 2]
        self.log_stds = torch.nn.Parameter(torch.full_like(self.means, math.log(std)))    # [K, 2]
        self.logits = torch.nn.Parameter(torch.zeros(len(means), dtype=DTYPE))            # [K]

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, 2] -> log p_θ(x) [N]."""
        components = _diagonal_normal_log_prob(x, self.means, self.log_stds)  # [N, K]
        return torch.logsumexp(components + F.log_softmax(self.logits, dim=0), dim=1)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """[n, 2]: a component from softmax(logits), then μ + σ·ε."""
        index = torch.multinomial(F.softmax(self.logits, dim=0), n, replacement=True, generator=generator)
        noise = torch.randn(n, 2, generator=generator, dtype=DTYPE)
        return self.means[index] + self.log_stds[index].exp() * noise


class GridAutoregressive(torch.nn.Module):
    """P(i_x)·P(i_y | i_x) on a bins × bins grid over [−box, box]², uniform within a bin.

    P(i_x) is a free table; P(i_y | i_x) = softmax(W₂ tanh(W₁ c_x + b₁) + b₂) with c_x the x-bin centre
    divided by box, so `hidden` bounds the rank of the conditional logit table (the capacity limit). With
    hidden = 1 the conditional moves monotonically along one path as x grows, so it cannot give x = ±2 the
    same conditional (y ≈ 0) and x = 0 another (y ≈ ±2): the ring is out of reach, the grid (y ⟂ x) is not.
    """

    def __init__(self, bins: int, box: float, hidden: int, generator: torch.Generator):
        super().__init__()
        self.bins, self.box, self.width = bins, float(box), 2 * float(box) / bins
        self.x_logits = torch.nn.Parameter(torch.zeros(bins, dtype=DTYPE))                                # [B]
        self.w1 = torch.nn.Parameter(3.0 * torch.randn(hidden, generator=generator, dtype=DTYPE))         # [H]
        self.b1 = torch.nn.Parameter(3.0 * torch.randn(hidden, generator=generator, dtype=DTYPE))         # [H]
        self.w2 = torch.nn.Parameter(0.1 * torch.randn(hidden, bins, generator=generator, dtype=DTYPE))   # [H, B]
        self.b2 = torch.nn.Parameter(torch.zeros(bins, dtype=DTYPE))                                      # [B]
        centres = -self.box + self.width * (torch.arange(bins, dtype=DTYPE) + 0.5)
        self.register_buffer("centres", centres)                                                         # [B]

    def bin_log_probs(self) -> torch.Tensor:
        """log P(i_x, i_y) of every bin [B, B] (rows i_x, columns i_y)."""
        hidden = torch.tanh(self.centres[:, None] / self.box * self.w1[None] + self.b1[None])  # [B, H]
        log_y_given_x = F.log_softmax(hidden @ self.w2 + self.b2[None], dim=1)                  # [B, B]
        return F.log_softmax(self.x_logits, dim=0)[:, None] + log_y_given_x

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, 2] -> log p_θ(x) [N]: bin log-probability − 2·log(width); −inf outside the box."""
        inside = ((x >= -self.box) & (x < self.box)).all(dim=1)                         # [N]
        index = ((x + self.box) / self.width).floor().long().clamp(0, self.bins - 1)    # [N, 2]
        log_p = self.bin_log_probs()[index[:, 0], index[:, 1]] - 2 * math.log(self.width)
        return torch.where(inside, log_p, torch.full_like(log_p, -math.inf))

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """[n, 2]: a bin (i_x, i_y) from the joint table, then a uniform point inside it."""
        flat = torch.multinomial(self.bin_log_probs().exp().flatten(), n, replacement=True, generator=generator)
        index = torch.stack([flat // self.bins, flat % self.bins], dim=1).to(DTYPE)      # [n, 2]
        return -self.box + self.width * (index + torch.rand(n, 2, generator=generator, dtype=DTYPE))


def make_model(kind: str, target: Target, cfg: Toy2DConfig, data: torch.Tensor,
               generator: torch.Generator) -> torch.nn.Module:
    """An untrained model: GMM means at K random data points (σ = 0.5), or the AR grid model."""
    if kind == "gmm":
        components = cfg.ring_components if target.name == "ring" else cfg.grid_components
        start = data[torch.randperm(len(data), generator=generator)[:components]]
        return GaussianMixture(start, std=0.5)
    if kind == "ar":
        return GridAutoregressive(cfg.ar_bins, cfg.box, cfg.ar_hidden, generator)
    raise ValueError(f"unknown model {kind!r}; expected one of {MODELS}")


# --- Training ---------------------------------------------------------------------------------------

def _adam_steps(model: torch.nn.Module, loss_fn, *, steps: int, lr: float, decay: bool = False) -> None:
    """`steps` Adam steps on loss_fn() with a fresh optimizer; `decay`: lr falls linearly to 0."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * (1 - step / steps) if decay else lr
        optimizer.zero_grad(set_to_none=True)
        loss_fn().backward()
        optimizer.step()


def fit_mle(model: torch.nn.Module, data: torch.Tensor, *, steps: int, lr: float, batch_size: int,
            generator: torch.Generator, decay: bool = False) -> torch.nn.Module:
    """Maximum likelihood (forward KL): Adam on −mean log p_θ(x) over random batches of data [N, 2]."""
    def loss() -> torch.Tensor:
        index = torch.randint(len(data), (batch_size,), generator=generator)
        return -model.log_prob(data[index]).mean()

    _adam_steps(model, loss, steps=steps, lr=lr, decay=decay)
    return model


def ddo_round(model: torch.nn.Module, data: torch.Tensor, *, objective: Objective, cfg: Toy2DConfig,
              generator: torch.Generator) -> torch.nn.Module:
    """One self-play round (Zheng et al. 2025, Eq. 13, Sec. 3): ref ← frozen copy of θ, pool ~ ref,
    Adam on the objective's variant loss at its (α, β) on the exact log-ratios r = log p_θ − log p_ref.
    Updates `model` in place; data [N, 2]."""
    ref = copy.deepcopy(model).requires_grad_(False)
    with torch.no_grad():
        pool = ref.sample(cfg.pool_size, generator)  # [P, 2]
        ref_real, ref_fake = ref.log_prob(data), ref.log_prob(pool)  # [N], [P]

    def loss() -> torch.Tensor:
        real = torch.randint(len(data), (cfg.batch_size,), generator=generator)
        fake = torch.randint(len(pool), (cfg.batch_size,), generator=generator)
        log_p = model.log_prob(torch.cat([data[real], pool[fake]]))  # [2B]: one pass for both halves
        logr_real = log_p[: cfg.batch_size] - ref_real[real]           # [B]
        logr_fake = log_p[cfg.batch_size:] - ref_fake[fake]            # [B]
        terms = ddo_loss(logr_real, logr_fake, alpha=objective.alpha, beta=objective.beta,
                         variant=objective.variant, clamp=cfg.clamp)
        return reduce_loss(*terms, alpha=objective.alpha)

    _adam_steps(model, loss, steps=cfg.steps_per_round, lr=cfg.lr)
    return model


# --- Metrics ----------------------------------------------------------------------------------------

def monte_carlo_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> tuple[float, float]:
    """KL(p‖q) ≈ mean(log p − log q) over samples of p, and its standard error. log_p, log_q: [N]."""
    difference = log_p - log_q  # [N]
    return difference.mean().item(), (difference.std() / math.sqrt(len(difference))).item()


def mode_hits(target: Target, samples: torch.Tensor) -> torch.Tensor:
    """Bool [N, M]: sample n lies within MODE_RADIUS·σ of mode m."""
    return torch.cdist(samples.to(DTYPE), target.means) <= MODE_RADIUS * target.std


def mode_metrics(target: Target, samples: torch.Tensor, cover_fraction: float) -> dict[str, float]:
    """Mode-based quality/diversity of model samples [N, 2].

    modes_covered: modes receiving ≥ cover_fraction/M of the samples within 3σ; precision: share of
    samples within 3σ of some mode; recall: modes_covered / M.
    """
    hits = mode_hits(target, samples)  # [N, M]
    num_modes = len(target.means)
    covered = int((hits.double().mean(dim=0) >= cover_fraction / num_modes).sum())
    return {"modes_covered": covered, "num_modes": num_modes,
            "precision": hits.any(dim=1).double().mean().item(), "recall": covered / num_modes}


@torch.no_grad()
def evaluate(model: torch.nn.Module, target: Target, data_eval: torch.Tensor, *, cfg: Toy2DConfig,
             generator: torch.Generator) -> dict[str, float]:
    """Forward/reverse KL (Monte Carlo with standard errors), mode metrics and k-NN precision/recall."""
    samples = model.sample(len(data_eval), generator)  # [N, 2]
    forward, forward_se = monte_carlo_kl(target_log_prob(target, data_eval), model.log_prob(data_eval))
    reverse, reverse_se = monte_carlo_kl(model.log_prob(samples), target_log_prob(target, samples))
    knn_precision, knn_recall = precision_recall(data_eval[: cfg.knn_size], samples[: cfg.knn_size])
    return {"forward_kl": forward, "forward_kl_se": forward_se, "reverse_kl": reverse,
            "reverse_kl_se": reverse_se, **mode_metrics(target, samples, cfg.cover_fraction),
            "knn_precision": knn_precision, "knn_recall": knn_recall}


def density_image(log_prob, box: float, resolution: int) -> torch.Tensor:
    """exp(log_prob) on a resolution² grid of cell centres over [−box, box]² -> [R, R] (rows = y)."""
    axis = -box + (2 * box / resolution) * (torch.arange(resolution, dtype=DTYPE) + 0.5)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    with torch.no_grad():
        return log_prob(torch.stack([x.flatten(), y.flatten()], dim=1)).exp().reshape(resolution, resolution)


# --- The study --------------------------------------------------------------------------------------

def objectives(cfg: Toy2DConfig) -> list[Objective]:
    """Every variant at every (α, β) setting, then the 'mle' control when cfg.mle_control."""
    runs = [Objective(v, a, b) for a, b in zip(cfg.alphas, cfg.betas) for v in cfg.variants]
    return runs + ([Objective("mle")] if cfg.mle_control else [])


def _continue(model, data, objective: Objective, cfg: Toy2DConfig, generator) -> torch.nn.Module:
    """One round of `objective`: a DDO round, or plain MLE for the same steps and lr (the control)."""
    if objective.variant == "mle":
        return fit_mle(model, data, steps=cfg.steps_per_round, lr=cfg.lr, batch_size=cfg.batch_size,
                       generator=generator)
    return ddo_round(model, data, objective=objective, cfg=cfg, generator=generator)


@single_thread()
def run_pair(target_name: str, kind: str, cfg: Toy2DConfig) -> tuple[list[dict], dict]:
    """MLE fit, then every objective for cfg.rounds rounds, on one (target, model) pair.

    Returns (records, images): one record per (objective, round), round 0 being the MLE fit (objective
    'mle'), and density images [R, R] keyed by (objective key, round), plus ('data', 0).
    """
    target = make_target(target_name, cfg.mode_std)
    data = target_sample(target, cfg.train_size, stable_generator(cfg.seed, target_name, "train"))
    data_eval = target_sample(target, cfg.eval_size, stable_generator(cfg.seed, target_name, "eval"))
    model = make_model(kind, target, cfg, data, stable_generator(cfg.seed, target_name, kind, "init"))
    fit_mle(model, data, steps=cfg.mle_steps, lr=cfg.mle_lr, batch_size=cfg.batch_size,
            generator=stable_generator(cfg.seed, target_name, kind, "mle"), decay=True)
    records, images = [], {("data", 0): density_image(lambda x: target_log_prob(target, x), cfg.box,
                                                       cfg.heatmap_resolution)}

    def measure(net, objective: Objective, round_index: int) -> None:
        generator = stable_generator(cfg.seed, target_name, kind, objective.key, round_index, "eval")
        metrics = evaluate(net, target, data_eval, cfg=cfg, generator=generator)
        records.append({"target": target_name, "model": kind, "objective": objective.variant,
                        "alpha": objective.alpha, "beta": objective.beta, "round": round_index, **metrics})
        images[objective.key, round_index] = density_image(net.log_prob, cfg.box, cfg.heatmap_resolution)

    measure(model, Objective("mle"), 0)
    for objective in objectives(cfg):
        net = copy.deepcopy(model)
        generator = stable_generator(cfg.seed, target_name, kind, objective.key)
        for round_index in range(1, cfg.rounds + 1):
            _continue(net, data, objective, cfg, generator)
            measure(net, objective, round_index)
    return records, images


def run_study(cfg: Toy2DConfig) -> tuple[list[dict], dict[tuple[str, str], dict]]:
    """Every (target, model) pair: records (see `run_pair`) and density images {(target, model): images}."""
    records, images = [], {}
    for target_name, kind in tqdm(list(itertools.product(cfg.targets, cfg.models)), desc="toy2d"):
        pair_records, images[target_name, kind] = run_pair(target_name, kind, cfg)
        records += pair_records
        log.info("%s/%s: %s", target_name, kind, ", ".join(
            f"{record_key(r)}@{r['round']} rKL={r['reverse_kl']:.2f} modes={r['modes_covered']}"
            for r in pair_records if r["round"] in (0, cfg.rounds)))
    return records, images


def record_key(record: dict) -> str:
    """The objective key of a record ('mle' or e.g. 'bce_a1_b0.1')."""
    return Objective(record["objective"], record["alpha"], record["beta"]).key
