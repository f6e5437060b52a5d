"""Seasoning: discriminator tilting of any generative model (Husain, De Bortoli & Nock 2026, arXiv 2603.18817).

Only the paper's abstract is public; the recipe below is the f-divergence-duality reconstruction in
docs/theory.md §6, with sampling-importance-resampling (Grover et al. 2019) and rejection
sampling (DRS, Azadi et al. 2019) to draw from the refined model.

Refined model (docs/theory.md §6): q̃(x) ∝ q(x)·(f*)′(h(x)), h the f-critic. Tilts per f
(Nowozin et al. 2016, Table 2), as `conjugate_derivative`:

| divergence  | f(u)                          | critic T* = f′(u)   | tilt (f*)′(t)  (domain)   |
|-------------|-------------------------------|---------------------|---------------------------|
| `kl`        | u log u                       | 1 + log u           | e^{t−1}                   |
| `rkl`       | −log u                        | −1/u                | −1/t         (t < 0)      |
| `pearson`   | (u − 1)²                      | 2(u − 1)            | 1 + t/2      (t > −2)     |
| `hellinger` | (√u − 1)²                     | 1 − u^{−1/2}        | (1 − t)^{−2} (t < 1)      |
| `js`        | u log u − (u+1) log((u+1)/2)  | log(2u/(u + 1))     | e^t/(2 − e^t) (t < log 2) |
| `gan`       | u log u − (u+1) log(u+1)      | log(u/(u + 1))      | e^t/(1 − e^t) (t < 0)     |

At the optimal critic T* = f′(p/q) every row gives the same tilt (f*)′(f′(u)) = u = p/q: the f only
matters for a critic trained with that f's variational objective. A BCE discriminator with logit v is
the `gan` row at t = log σ(v), whose tilt is σ(v)/(1 − σ(v)) = e^v: the density-ratio (KL/DG) tilt.
So for a logit λ ≈ log p_data/p_model the sampling weights are g(λ) = e^λ (`tilt_log_weights`), with
- tempering g = e^{γλ}: at the exact λ, q̃ ∝ q^{1−γ}·p^γ, DDO's geometric target with γ = 1/β
  (Zheng et al. 2025, Thm 3.3);
- clipping log g ≤ c: bounded weights (DRS), needed for rejection sampling with bound M = e^c.
A restricted discriminator's tilt is not normalised: always self-normalise.

KL tilt identity (docs/theory.md §6): for Q̃ ∝ Q·e^λ, with Z = E_Q[e^λ],
    KL(P‖Q) − KL(P‖Q̃) = E_P[λ] − log Z   and   KL(Q̃‖Q) = E_Q̃[λ] − log Z,
so KL(P‖Q) − KL(P‖Q̃) = KL(Q̃‖Q) iff E_P[λ] = E_Q̃[λ]. This holds for the I-projection
λ = argmax_{h ∈ H} E_P[h] − log E_Q[e^h] over a linear class H (moment matching E_Q̃[φ] = E_P[φ]
for every feature φ, and λ ∈ H), and for the exact λ = log p/q; `fit_exponential_tilt` computes it.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

DIVERGENCES = ("kl", "rkl", "pearson", "hellinger", "js", "gan")
DISTRIBUTION_ATOL = 1e-8

# (f*)′(t) and its open domain (low, high) per divergence; f′(u) maps a density ratio to the optimal critic.
_TILT: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], float, float]] = {
    "kl": (lambda t: torch.exp(t - 1), -math.inf, math.inf),
    "rkl": (lambda t: -1 / t, -math.inf, 0.0),
    "pearson": (lambda t: 1 + t / 2, -2.0, math.inf),
    "hellinger": (lambda t: (1 - t) ** -2, -math.inf, 1.0),
    "js": (lambda t: torch.exp(t) / (2 - torch.exp(t)), -math.inf, math.log(2)),
    "gan": (lambda t: torch.exp(t) / (1 - torch.exp(t)), -math.inf, 0.0),
}
_CRITIC: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "kl": lambda u: 1 + torch.log(u),
    "rkl": lambda u: -1 / u,
    "pearson": lambda u: 2 * (u - 1),
    "hellinger": lambda u: 1 - u ** -0.5,
    "js": lambda u: torch.log(2 * u / (u + 1)),
    "gan": lambda u: torch.log(u / (u + 1)),
}


def _check_divergence(divergence: str) -> None:
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; expected one of {', '.join(DIVERGENCES)}")


def _check_vector(name: str, x: torch.Tensor) -> torch.Tensor:
    """A finite 1-D floating tensor [N >= 1]."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim != 1 or len(x) == 0:
        found = f"{x.dtype} {list(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected a 1-D floating tensor [N >= 1], found {found}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: expected finite values, found {int((~torch.isfinite(x)).sum())} non-finite")
    return x


def conjugate_derivative(critic: torch.Tensor, divergence: str) -> torch.Tensor:
    """Tilt (f*)′(t) of critic values t [N] for `divergence` (Nowozin et al. 2016, Table 2; table above).

    Raises if a critic value lies outside the conjugate's domain (e.g. t ≥ 0 for `gan`).
    """
    _check_divergence(divergence)
    critic = _check_vector("critic", critic)
    tilt, low, high = _TILT[divergence]
    if bool((critic <= low).any() or (critic >= high).any()):
        raise ValueError(f"critic values must lie in ({low}, {high}) for {divergence!r}, found "
                         f"[{critic.min().item():.4g}, {critic.max().item():.4g}]")
    return tilt(critic)


def optimal_critic(log_ratio: torch.Tensor, divergence: str) -> torch.Tensor:
    """T* = f′(e^λ) for log-ratios λ = log p/q [N]: the maximiser of the variational form (Nowozin et al. 2016)."""
    _check_divergence(divergence)
    return _CRITIC[divergence](torch.exp(_check_vector("log_ratio", log_ratio)))


def tilt_log_weights(logit: torch.Tensor, *, exponent: float = 1.0, clip: float | None = None) -> torch.Tensor:
    """Log-weights log g(λ) = min(γ·λ, c) of the density-ratio tilt g = e^{γλ} (γ = exponent, c = clip): [N].

    γ = 1, c = None is the KL / DG tilt q̃ ∝ q·p/q; γ < 1 tempers towards q; c bounds every weight by e^c.
    """
    logit = _check_vector("logit", logit)
    if not (math.isfinite(exponent) and exponent >= 0):
        raise ValueError(f"exponent must be finite and >= 0, found {exponent}")
    log_weights = exponent * logit
    if clip is not None:
        if not math.isfinite(clip):
            raise ValueError(f"clip must be finite or None, found {clip}")
        log_weights = log_weights.clamp(max=clip)
    return log_weights


def effective_sample_size(log_weights: torch.Tensor) -> float:
    """Kish ESS (Σw)²/Σw² of self-normalised weights w = e^{log_weights}: between 1 and N."""
    w = torch.softmax(_check_vector("log_weights", log_weights).double(), dim=0)
    return 1.0 / (w ** 2).sum().item()


def _check_generator(generator: torch.Generator) -> None:
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"expected a torch.Generator, found {type(generator).__name__}")


def sir_indices(log_weights: torch.Tensor, num_out: int, generator: torch.Generator, *,
                replacement: bool = True) -> torch.Tensor:
    """Sampling-importance-resampling: num_out indices into M candidates drawn ∝ e^{log_weights}: int64 [num_out].

    With replacement the resample converges to the tilted model as M → ∞ (Rubin 1988); without
    replacement (num_out ≤ M) there are no duplicates but the draw is biased towards q for num_out ~ M.
    """
    log_weights = _check_vector("log_weights", log_weights)
    _check_generator(generator)
    if num_out < 1 or (not replacement and num_out > len(log_weights)):
        raise ValueError(f"num_out must be >= 1 (and <= {len(log_weights)} without replacement), found {num_out}")
    probabilities = torch.softmax(log_weights.double(), dim=0)  # [M]
    return torch.multinomial(probabilities, num_out, replacement=replacement, generator=generator)


def rejection_indices(log_weights: torch.Tensor, generator: torch.Generator, *,
                      log_bound: float | None = None) -> torch.Tensor:
    """Rejection sampling: candidate i is kept with probability e^{log w_i − log M}: int64 [A] kept indices.

    Exact for q̃ ∝ q·w when M ≥ sup w (Azadi et al. 2019 use the max over a burn-in set). `log_bound`
    None uses the max over these candidates; a given bound below some weight raises (the result would be
    biased: clip the weights or raise the bound). Acceptance rate = A / M.
    """
    log_weights = _check_vector("log_weights", log_weights).double()
    _check_generator(generator)
    largest = log_weights.max().item()
    if log_bound is None:
        log_bound = largest
    elif largest > log_bound + 1e-12:
        raise ValueError(f"log_bound {log_bound:.6g} is below the largest log-weight {largest:.6g}; "
                         "clip the weights (tilt_log_weights(clip=...)) or raise the bound")
    uniform = torch.rand(len(log_weights), generator=generator, dtype=torch.float64)  # [M]
    return torch.nonzero(torch.log(uniform) < log_weights - log_bound).flatten()


# ----------------------------------------------------------------------------------------------------
# Exact categorical tilts (docs/theory.md §6).

def _as_distribution(name: str, p: torch.Tensor) -> torch.Tensor:
    """A full-support probability vector [K] as float64."""
    p = torch.as_tensor(p, dtype=torch.float64)
    if p.ndim != 1 or len(p) < 2 or not bool((p > 0).all()) or abs(p.sum().item() - 1) > DISTRIBUTION_ATOL:
        raise ValueError(f"{name}: expected a full-support probability vector [K >= 2] summing to 1, found "
                         f"shape {list(p.shape)}, min {p.min().item():.3g}, sum {p.sum().item():.12g}")
    return p


def kl_divergence(p: torch.Tensor, q: torch.Tensor) -> float:
    """KL(p‖q) = Σ p log(p/q) of full-support categoricals [K], float64."""
    p, q = _as_distribution("p", p), _as_distribution("q", q)
    return (p * (p.log() - q.log())).sum().item()


def tilt_categorical(q: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """Exact tilt q̃ = q·e^{log_weights}/Z of a categorical [K] (self-normalised), float64."""
    q = _as_distribution("q", q)
    log_weights = _check_vector("log_weights", torch.as_tensor(log_weights, dtype=torch.float64))
    if log_weights.shape != q.shape:
        raise ValueError(f"log_weights must have shape {list(q.shape)}, found {list(log_weights.shape)}")
    return torch.softmax(q.log() + log_weights, dim=0)


def fit_exponential_tilt(p: torch.Tensor, q: torch.Tensor, features: torch.Tensor, *,
                         tol: float = 1e-13, max_iter: int = 100) -> torch.Tensor:
    """KL seasoning with a linear discriminator class (docs/theory.md §6): the I-projection logit λ = Φw [K].

    Maximises the Donsker–Varadhan objective E_P[Φw] − log E_Q[e^{Φw}] over w by Newton's method in
    float64 (concave; gradient E_P[Φ] − E_Q̃[Φ], Hessian −Cov_Q̃[Φ]). `p` may be the empirical histogram
    of data samples. features: [K, H] (constants are implied by the normalisation).
    """
    p, q = _as_distribution("p", p), _as_distribution("q", q)
    features = torch.as_tensor(features, dtype=torch.float64)
    if features.ndim != 2 or features.shape[0] != len(q):
        raise ValueError(f"features must be [K={len(q)}, H], found {list(features.shape)}")
    w = features.new_zeros(features.shape[1])  # [H]
    for _ in range(max_iter):
        tilted = torch.softmax(q.log() + features @ w, dim=0)            # [K]
        gradient = features.T @ (p - tilted)                               # [H]
        if gradient.abs().max().item() < tol:
            break
        centred = features - tilted @ features                             # [K, H]
        covariance = centred.T @ (tilted[:, None] * centred)               # [H, H]
        w = w + torch.linalg.solve(covariance, gradient)
    return features @ w


class TiltIdentity(NamedTuple):
    """Both sides of KL(P‖Q) − KL(P‖Q̃) = KL(Q̃‖Q) and the gap E_P[λ] − E_Q̃[λ] that separates them."""

    gain: float          # KL(P‖Q) − KL(P‖Q̃)
    tilt_kl: float       # KL(Q̃‖Q)
    moment_gap: float    # E_P[λ] − E_Q̃[λ] = gain − tilt_kl


def tilt_identity(p: torch.Tensor, q: torch.Tensor, logit: torch.Tensor) -> TiltIdentity:
    """Evaluate the KL tilt identity (docs/theory.md §6) for Q̃ ∝ Q·e^λ in float64."""
    p, q = _as_distribution("p", p), _as_distribution("q", q)
    tilted = tilt_categorical(q, logit)
    logit = torch.as_tensor(logit, dtype=torch.float64)
    return TiltIdentity(gain=kl_divergence(p, q) - kl_divergence(p, tilted), tilt_kl=kl_divergence(tilted, q),
                        moment_gap=((p - tilted) * logit).sum().item())


# ----------------------------------------------------------------------------------------------------
# Image generators.

class Refined(NamedTuple):
    """Output of `refine_images`."""

    images: torch.Tensor                # uint8 [n_out, C, H, W]
    labels: torch.Tensor | None         # int64 [n_out] (the candidates' labels) or None
    index: torch.Tensor                 # int64 [n_out] rows of the candidate pool
    effective_sample_size: float        # Kish ESS of the weights (per class: the smallest)


def _class_counts(labels: torch.Tensor, n_out: int) -> dict[int, int]:
    """Output count per class proportional to the pool's class counts (largest remainder)."""
    classes, counts = torch.unique(labels, return_counts=True)
    exact = counts.double() * n_out / len(labels)
    floor = exact.floor().long()
    order = torch.argsort(exact - floor, descending=True, stable=True)
    floor[order[:n_out - int(floor.sum())]] += 1
    return {int(c): int(k) for c, k in zip(classes, floor) if k > 0}


def refine_images(images: torch.Tensor, logits: torch.Tensor, n_out: int, generator: torch.Generator, *,
                  labels: torch.Tensor | None = None,  # int64 [M]: tilt within each class, keep class shares
                  exponent: float = 1.0,               # tempering γ of g = e^{γλ}
                  clip: float | None = None,           # log-weight cap c
                  replacement: bool = True) -> Refined:
    """SIR refinement of a candidate pool of model samples by a discriminator logit (Grover et al. 2019).

    images: uint8 [M, C, H, W] drawn from the model; logits: [M] λ ≈ log p_data/p_model (e.g.
    `guidance.discriminator_logits` at a small σ). Draws n_out rows ∝ e^{min(γλ, c)}; with labels, the
    tilt acts on each class's candidates and every class keeps its share of the pool.
    """
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"images: expected uint8 [M, C, H, W], found {getattr(images, 'dtype', type(images))}")
    log_weights = tilt_log_weights(logits, exponent=exponent, clip=clip)
    if len(log_weights) != len(images):
        raise ValueError(f"logits must have one value per image ({len(images)}), found {len(log_weights)}")
    if labels is None:
        index = sir_indices(log_weights, n_out, generator, replacement=replacement)
        return Refined(images[index], None, index, effective_sample_size(log_weights))
    if labels.shape != (len(images),) or labels.is_floating_point():
        raise ValueError(f"labels: expected int64 [{len(images)}], found {labels.dtype} {list(labels.shape)}")
    if n_out < 1:
        raise ValueError(f"n_out must be >= 1, found {n_out}")
    parts, ess = [], math.inf
    for label, count in _class_counts(labels, n_out).items():
        rows = torch.nonzero(labels == label).flatten()  # [M_c]
        parts.append(rows[sir_indices(log_weights[rows], count, generator, replacement=replacement)])
        ess = min(ess, effective_sample_size(log_weights[rows]))
    index = torch.cat(parts)
    return Refined(images[index], labels[index], index, ess)
