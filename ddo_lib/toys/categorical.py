"""Exact categorical oracles for DDO (docs/theory.md §2–§4; Zheng et al. 2025, Thm 3.1 and Thm 3.3).

Setup: K categories, full-support p_ref and p_data, a full-capacity model q = softmax(s) and the implicit
log-ratio r = log q − log p_ref. All computations are in float64 torch tensors (inputs may be any
array-like of probabilities); the population loss reuses `ddo_lib.objective.ddo_loss`, so the oracles and
the training objective share one implementation.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import torch

from ddo_lib.objective import _check_positive, _check_variant, ddo_loss

DISTRIBUTION_ATOL = 1e-8  # how far from 1 the sum of a probability vector may be


def _as_distribution(name: str, p: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """Validate a full-support probability vector [K] and return it as float64."""
    p = torch.as_tensor(p, dtype=torch.float64)
    if p.ndim != 1 or p.shape[0] < 2:
        raise ValueError(f"{name} must be a 1-D probability vector [K] with K >= 2, found shape {tuple(p.shape)}")
    if not bool(torch.all(p > 0)):
        raise ValueError(f"{name} must have full support (all entries > 0), found min {p.min().item():.3g}")
    if abs(p.sum().item() - 1.0) > DISTRIBUTION_ATOL:
        raise ValueError(f"{name} must sum to 1, found sum {p.sum().item():.12g}")
    return p


def _as_pair(p_ref, p_data) -> tuple[torch.Tensor, torch.Tensor]:
    p_ref = _as_distribution("p_ref", p_ref)
    p_data = _as_distribution("p_data", p_data)
    if p_ref.shape != p_data.shape:
        raise ValueError(f"p_ref and p_data must have the same K, found {p_ref.shape[0]} and {p_data.shape[0]}")
    return p_ref, p_data


def _log_z(p_ref: torch.Tensor, p_data: torch.Tensor, beta: float) -> torch.Tensor:
    """log Z_β = log Σ_x p_ref^{1−1/β} · p_data^{1/β}."""
    return torch.logsumexp((1 - 1 / beta) * p_ref.log() + p_data.log() / beta, dim=0)


def renyi_divergence(p: torch.Tensor | Sequence[float], q: torch.Tensor | Sequence[float], order: float) -> float:
    """Rényi divergence D_a(p‖q) = log(Σ p^a q^{1−a}) / (a − 1); a = 1 gives KL(p‖q)."""
    p, q = _as_distribution("p", p), _as_distribution("q", q)
    order = _check_positive("order", order)
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same K, found {p.shape[0]} and {q.shape[0]}")
    if order == 1.0:
        return (p * (p.log() - q.log())).sum().item()
    return (torch.logsumexp(order * p.log() + (1 - order) * q.log(), dim=0) / (order - 1)).item()


def geometric_target(p_ref: torch.Tensor | Sequence[float], p_data: torch.Tensor | Sequence[float],
                     beta: float) -> torch.Tensor:
    """DDO optimum p* = p_ref^{1−1/β} · p_data^{1/β} / Z_β (Zheng et al. 2025, Thm 3.3; docs/theory.md §2).

    Reached for every α by the learnable-offset variant, and by vanilla DDO iff α = alpha_star(β).
    Returns float64 [K].
    """
    p_ref, p_data = _as_pair(p_ref, p_data)
    beta = _check_positive("beta", beta)
    log_q = (1 - 1 / beta) * p_ref.log() + p_data.log() / beta  # [K]
    return torch.softmax(log_q, dim=0)


def alpha_star(p_ref: torch.Tensor | Sequence[float], p_data: torch.Tensor | Sequence[float],
               beta: float) -> float:
    """α*(β) = Z_β^β = exp((1 − β)·D_{1/β}(p_data‖p_ref)), the α at which vanilla DDO hits the geometric
    target (the "certain α" of Thm 3.3; docs/theory.md §2). β < 1 ⇒ α* ≥ 1; β > 1 ⇒ α* ≤ 1."""
    p_ref, p_data = _as_pair(p_ref, p_data)
    beta = _check_positive("beta", beta)
    return math.exp(beta * _log_z(p_ref, p_data, beta).item())


def collapse_threshold(beta: float) -> float:
    """α above which q = p_data stops being a local minimum of vanilla DDO when p_ref = p_data.

    (1 + β/2)/(1 − β/2) ≈ 1 + β (docs/theory.md §2), from the Hessian at θ = ref,
    (β/2)·[H_MLE + (β/2)·E_data[s sᵀ] − α(1 − β/2)·F_ref] with all three matrices equal (docs/theory.md §4).
    For β ≥ 2 the last coefficient is ≤ 0, no α collapses, and the threshold is +inf.
    """
    beta = _check_positive("beta", beta)
    return math.inf if beta >= 2 else (1 + beta / 2) / (1 - beta / 2)


def selfplay_contraction(beta: float) -> float:
    """|1 − 1/β|: per-round factor on the centred log-error of exact self-play with the offset variant
    (docs/theory.md §5). < 1 converges (oscillating for ½ < β < 1); β < ½ diverges."""
    beta = _check_positive("beta", beta)
    return abs(1 - 1 / beta)


def _population_loss_log_q(log_q: torch.Tensor, p_ref: torch.Tensor, p_data: torch.Tensor, *,
                           alpha: float, beta: float, variant: str, offset, clamp) -> torch.Tensor:
    """Σ_x p_data(x)·ℓ_real(r_x) + Σ_x p_ref(x)·α·ℓ_fake(r_x) with r = log q − log p_ref."""
    logr = log_q - p_ref.log()  # [K]
    loss_real, loss_fake = ddo_loss(logr, logr, alpha=alpha, beta=beta, variant=variant,
                                    offset=offset, clamp=clamp)
    return (p_data * loss_real).sum() + (p_ref * loss_fake).sum()


def population_loss(
    q: torch.Tensor | Sequence[float],       # [K] model probabilities (full support)
    p_ref: torch.Tensor | Sequence[float],   # [K]
    p_data: torch.Tensor | Sequence[float],  # [K]
    *,
    alpha: float,
    beta: float,
    variant: str = "bce",
    offset: float | torch.Tensor = 0.0,
    clamp: float | None = None,
) -> torch.Tensor:
    """Population DDO loss E_data[ℓ_real] + E_ref[α·ℓ_fake] of a categorical q (Zheng et al. 2025, Eq. 13).

    q may carry gradients (float64 tensors keep their graph). Returns a float64 scalar tensor.
    """
    p_ref, p_data = _as_pair(p_ref, p_data)
    q = q.to(torch.float64) if isinstance(q, torch.Tensor) else torch.as_tensor(q, dtype=torch.float64)
    if q.shape != p_ref.shape or not bool(torch.all(q > 0)):
        raise ValueError(f"q must be a positive vector of shape {tuple(p_ref.shape)}, found shape "
                         f"{tuple(q.shape)}")
    return _population_loss_log_q(q.log(), p_ref, p_data, alpha=alpha, beta=beta, variant=variant,
                                  offset=offset, clamp=clamp)


@dataclasses.dataclass(frozen=True)
class Optimum:
    """Result of `solve_optimum`."""

    q: torch.Tensor                  # [K] float64 optimal model probabilities
    offset: float                    # c at the solution (the fixed one unless learn_offset)
    loss: float                      # population loss at the solution
    grad_norm: float                 # max |∂loss| over the free parameters
    min_hessian_eigenvalue: float    # < 0 means a saddle (gauge-fixed logits, plus c if learned)
    iterations: int                  # Newton iterations taken
    converged: bool                  # grad_norm < tol


def _objective(p_ref, p_data, *, alpha, beta, variant, offset, learn_offset):
    """Loss of the free parameters x = [s_1..s_{K−1}] (+ c): s_K = 0 fixes the softmax gauge."""
    def loss(x: torch.Tensor) -> torch.Tensor:
        num_free = p_ref.shape[0] - 1
        logits = torch.cat([x[:num_free], x.new_zeros(1)])  # [K]
        c = x[num_free] if learn_offset else offset
        return _population_loss_log_q(torch.log_softmax(logits, dim=0), p_ref, p_data, alpha=alpha,
                                      beta=beta, variant=variant, offset=c, clamp=None)
    return loss


def _value_and_grad(loss, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    x = x.detach().requires_grad_(True)
    value = loss(x)
    (grad,) = torch.autograd.grad(value, x)
    return value.item(), grad


def _newton_direction(hessian: torch.Tensor, grad: torch.Tensor, max_step: float) -> torch.Tensor:
    """Saddle-free Newton step −|H|⁻¹ g (eigenvalues replaced by their moduli), capped in ∞-norm."""
    eigenvalues, eigenvectors = torch.linalg.eigh(hessian)
    floor = 1e-12 * max(1.0, eigenvalues.abs().max().item())
    scale = eigenvalues.abs().clamp(min=floor)
    direction = -eigenvectors @ ((eigenvectors.T @ grad) / scale)
    norm = direction.abs().max().item()
    return direction * (max_step / norm) if norm > max_step else direction


def solve_optimum(
    p_ref: torch.Tensor | Sequence[float],   # [K] frozen reference (also the starting point)
    p_data: torch.Tensor | Sequence[float],  # [K]
    *,
    alpha: float,
    beta: float,
    variant: str = "bce",
    offset: float = 0.0,                     # fixed c, or the starting c when learn_offset
    learn_offset: bool = False,              # optimise a scalar c jointly with q
    init_logits: torch.Tensor | None = None, # [K] starting logits (default log p_ref, i.e. θ = ref)
    tol: float = 1e-10,                      # stop when max |gradient| < tol
    max_iter: int = 200,
) -> Optimum:
    """Full-capacity DDO optimum over the simplex by damped saddle-free Newton in float64 (docs/theory.md §2).

    Minimises `population_loss(softmax(s), ...)` over logits s (and c if `learn_offset`). Gradients and
    Hessians come from autograd; each step is backtracked until the Armijo condition holds. A start at
    a stationary point (e.g. p_ref = p_data) stays there; read `min_hessian_eigenvalue` to tell a minimum
    from a saddle.
    """
    p_ref, p_data = _as_pair(p_ref, p_data)
    _check_positive("alpha", alpha)
    _check_positive("beta", beta)
    _check_variant(variant)
    start = p_ref.log() if init_logits is None else torch.as_tensor(init_logits, dtype=torch.float64)
    if start.shape != p_ref.shape:
        raise ValueError(f"init_logits must have shape {tuple(p_ref.shape)}, found {tuple(start.shape)}")
    x = start[:-1] - start[-1]  # gauge s_K = 0
    if learn_offset:
        x = torch.cat([x, x.new_tensor([float(offset)])])
    loss = _objective(p_ref, p_data, alpha=alpha, beta=beta, variant=variant, offset=float(offset),
                      learn_offset=learn_offset)
    value, grad = _value_and_grad(loss, x)
    iterations = 0
    while grad.abs().max().item() >= tol and iterations < max_iter:
        hessian = torch.autograd.functional.hessian(loss, x)
        direction = _newton_direction(hessian, grad, max_step=10.0)
        slope = (grad @ direction).item()
        step = 1.0
        for _ in range(60):  # backtracking line search
            trial = x + step * direction
            trial_value, trial_grad = _value_and_grad(loss, trial)
            decreased = trial_value <= value + 1e-4 * step * slope
            # At machine precision the loss cannot drop further; accept steps that still shrink the gradient.
            flat = trial_value <= value + 1e-14 * abs(value) and trial_grad.abs().max() < grad.abs().max()
            if decreased or flat:
                break
            step /= 2
        else:
            break
        x, value, grad = trial, trial_value, trial_grad
        iterations += 1
    hessian = torch.autograd.functional.hessian(loss, x)
    num_free = p_ref.shape[0] - 1
    q = torch.softmax(torch.cat([x[:num_free], x.new_zeros(1)]), dim=0).detach()
    return Optimum(
        q=q,
        offset=x[num_free].item() if learn_offset else float(offset),
        loss=value,
        grad_norm=grad.abs().max().item(),
        min_hessian_eigenvalue=torch.linalg.eigvalsh(hessian).min().item(),
        iterations=iterations,
        converged=grad.abs().max().item() < tol,
    )
