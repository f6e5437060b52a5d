"""DDO objective on implicit log-ratios (Zheng et al. 2025, Eq. 13; f-divergence family, docs/theory.md §3).

Every function here is a pure function of log-ratios r = log p_θ(x) − log p_ref(x); the objective knows
nothing of models. Losses return per-sample terms and the caller reduces (`reduce_loss`).

The implicit discriminator logit is λ = β·r + c (c = `offset`; c = 0 is vanilla DDO). Each variant is the
critic loss L_f = −E_data[f′(ρ)] + α·E_ref[ρ·f′(ρ) − f(ρ)] with ρ = e^λ, written per sample with
θ-independent constants dropped (docs/theory.md §3). Its pointwise minimiser is ρ = p_data/(α·p_ref)
for every f, so c = −log α (NCE; `nce_offset`) or a learnable scalar c restores consistency.

| variant     | f(u)                         | real term (x ~ data) | fake term (x ~ p_ref), times α |
|-------------|------------------------------|----------------------|--------------------------------|
| `bce`       | u log u − (u+1) log(u+1)     | −log σ(λ)            | −log σ(−λ)      (paper, Eq. 13) |
| `kl`        | u log u                      | −λ                   | e^λ             (β = 1: MLE)    |
| `rkl`       | −log u                       | e^{−λ}               | λ                               |
| `pearson`   | (u − 1)²                     | −2·e^λ               | e^{2λ}          (LSIF)          |
| `hellinger` | (√u − 1)²                    | e^{−λ/2}             | e^{λ/2}         (AdaBoost)      |
| `ns`        | (1+u) log((1+u)/(2u))        | e^{−λ} + log σ(λ)    | log σ(λ)                        |

Per-pair loss at θ = ref (r ≡ 0, c = 0): bce (1+α)·log 2, kl α, rkl 1, pearson α − 2, hellinger 1 + α,
ns 1 − (1+α)·log 2.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

VARIANTS = ("bce", "kl", "rkl", "pearson", "hellinger", "ns")
REDUCTIONS = ("mean", "var")
# Exponent arguments are always capped here so no exponential term overflows float32 (e^80 ≈ 5.5e34);
# beyond the cap the term is constant and its gradient is zero. `clamp` can set a tighter |λ| bound.
EXP_GUARD = 80.0
# (f''(1), κ_f = 1 + f'''(1)/f''(1)) per variant: the gradient at θ = ref is −β·f''(1)·E_data[∇log p_θ]
# and κ_f enters the Hessian there (docs/theory.md §4).
CURVATURE = {
    "bce": (0.5, -0.5),
    "kl": (1.0, 0.0),
    "rkl": (1.0, -1.0),
    "pearson": (2.0, 1.0),
    "hellinger": (0.5, -0.5),
    "ns": (0.5, -1.5),
}


def _exp(argument: torch.Tensor) -> torch.Tensor:
    """e^argument with the argument capped at EXP_GUARD (finite in float32)."""
    return torch.exp(argument.clamp(max=EXP_GUARD))


def _terms_bce(lam: torch.Tensor, lam_exp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return -F.logsigmoid(lam), -F.logsigmoid(-lam)


def _terms_kl(lam: torch.Tensor, lam_exp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return -lam, _exp(lam_exp)


def _terms_rkl(lam: torch.Tensor, lam_exp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _exp(-lam_exp), lam


def _terms_pearson(lam: torch.Tensor, lam_exp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return -2.0 * _exp(lam_exp), _exp(2.0 * lam_exp)


def _terms_hellinger(lam: torch.Tensor, lam_exp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _exp(-0.5 * lam_exp), _exp(0.5 * lam_exp)


def _terms_ns(lam: torch.Tensor, lam_exp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _exp(-lam_exp) + F.logsigmoid(lam), F.logsigmoid(lam)


_TERMS: dict[str, Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = {
    "bce": _terms_bce,
    "kl": _terms_kl,
    "rkl": _terms_rkl,
    "pearson": _terms_pearson,
    "hellinger": _terms_hellinger,
    "ns": _terms_ns,
}


def _check_positive(name: str, value: float) -> float:
    """Return `value` as a float, or raise if it is not a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a positive number, found {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0, found {value}")
    return float(value)


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")


def _as_loss_dtype(name: str, x: torch.Tensor) -> torch.Tensor:
    """Validate a 1-D floating tensor [B] and promote it to float32 (float64 stays float64)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, found {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, found dtype {x.dtype}")
    if x.ndim != 1 or x.shape[0] == 0:
        raise ValueError(f"{name} must be 1-D [B] with B >= 1, found shape {tuple(x.shape)}")
    return x if x.dtype == torch.float64 else x.float()


def _check_pair(logr_real: torch.Tensor, logr_fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate paired log-ratios: both 1-D [B] floating tensors of the same length."""
    logr_real = _as_loss_dtype("logr_real", logr_real)
    logr_fake = _as_loss_dtype("logr_fake", logr_fake)
    if logr_real.shape != logr_fake.shape:
        raise ValueError("logr_real and logr_fake must have the same shape [B], found "
                         f"{tuple(logr_real.shape)} and {tuple(logr_fake.shape)}")
    dtype = torch.promote_types(logr_real.dtype, logr_fake.dtype)
    return logr_real.to(dtype), logr_fake.to(dtype)


def _as_offset(offset: float | torch.Tensor, dtype: torch.dtype) -> float | torch.Tensor:
    """Offset c as a float or a 0-dim tensor (a learnable scalar keeps its graph)."""
    if isinstance(offset, torch.Tensor):
        if offset.numel() != 1 or not offset.is_floating_point():
            raise ValueError("offset tensor must be a floating scalar (one element), found "
                             f"shape {tuple(offset.shape)} and dtype {offset.dtype}")
        return offset.reshape(()).to(dtype)
    if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not math.isfinite(offset):
        raise ValueError(f"offset must be a finite number or a scalar tensor, found {offset!r}")
    return float(offset)


def nce_offset(alpha: float) -> float:
    """Offset c = −log α that makes the α-weighted loss consistent at β = 1 (NCE; docs/theory.md §2)."""
    return -math.log(_check_positive("alpha", alpha))


def ddo_loss(
    logr_real: torch.Tensor,             # [B] log p_θ(x) − log p_ref(x) on data samples
    logr_fake: torch.Tensor,             # [B] the same on samples of the frozen reference
    *,
    alpha: float,                        # weight of the fake term (α > 0)
    beta: float,                         # scale of the log-ratio (β > 0)
    variant: str = "bce",                # one of VARIANTS; 'bce' is the paper loss
    offset: float | torch.Tensor = 0.0,  # logit offset c; −log α is the NCE form; a scalar tensor may be learnable
    clamp: float | None = None,          # if set, |λ| ≤ clamp inside exponential terms
) -> tuple[torch.Tensor, torch.Tensor]:
    """DDO loss per sample (Zheng et al. 2025, Eq. 13; variants from docs/theory.md §3).

    With λ = β·r + c, 'bce' gives loss_real = −log σ(λ_real) and loss_fake = −α·log σ(−λ_fake), so the
    paper's loss is `(loss_real + loss_fake).mean()`. Computed in float32 (float64 inputs stay float64)
    with `logsigmoid`; finite for any finite r. Returns (loss_real [B], loss_fake [B]), the fake term
    already multiplied by α.
    """
    logr_real, logr_fake = _check_pair(logr_real, logr_fake)
    alpha = _check_positive("alpha", alpha)
    beta = _check_positive("beta", beta)
    _check_variant(variant)
    offset = _as_offset(offset, logr_real.dtype)
    if clamp is not None:
        clamp = _check_positive("clamp", clamp)
    lam_real = beta * logr_real + offset  # [B]
    lam_fake = beta * logr_fake + offset  # [B]
    lam_real_exp = lam_real if clamp is None else lam_real.clamp(-clamp, clamp)
    lam_fake_exp = lam_fake if clamp is None else lam_fake.clamp(-clamp, clamp)
    terms = _TERMS[variant]
    loss_real, _ = terms(lam_real, lam_real_exp)
    _, loss_fake = terms(lam_fake, lam_fake_exp)
    return loss_real, alpha * loss_fake


def _check_weights(name: str, weights: torch.Tensor | None, loss: torch.Tensor) -> torch.Tensor | float:
    """Per-row weights: None (all ones), a scalar, or a tensor [B] matching its loss."""
    if weights is None:
        return 1.0
    if not isinstance(weights, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, found {type(weights).__name__}")
    if weights.ndim == 0 or tuple(weights.shape) == tuple(loss.shape):
        return weights.to(loss.dtype)
    raise ValueError(f"{name} must be a scalar or have shape {tuple(loss.shape)}, found {tuple(weights.shape)}")


def reduce_loss(
    loss_real: torch.Tensor,                    # [B] from ddo_loss
    loss_fake: torch.Tensor,                    # [B] from ddo_loss (already α-weighted)
    *,
    reduction: str = "mean",                    # 'mean' (paper App. D) or 'var' (official VAR trainer)
    alpha: float,                               # the α passed to ddo_loss (used by 'var')
    weights_real: torch.Tensor | None = None,   # [B] or scalar multipliers of loss_real
    weights_fake: torch.Tensor | None = None,   # [B] or scalar multipliers of loss_fake
) -> torch.Tensor:
    """Batch reduction of the DDO loss (Zheng et al. 2025, App. D mean; NVlabs/DDO VAR trainer ÷ max(α, 1)).

    'mean' = mean(w_real·loss_real) + mean(w_fake·loss_fake), the paper's batch mean of the per-pair sum.
    'var'  = the same ÷ max(α, 1), so the gradient scale stays roughly constant across α.
    Weights multiply the terms as returned by `ddo_loss` (α already inside loss_fake); for the official
    label-dropout rows use `var_row_weights`. Returns a scalar tensor.
    """
    loss_real = _as_loss_dtype("loss_real", loss_real)
    loss_fake = _as_loss_dtype("loss_fake", loss_fake)
    alpha = _check_positive("alpha", alpha)
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {', '.join(REDUCTIONS)}")
    w_real = _check_weights("weights_real", weights_real, loss_real)
    w_fake = _check_weights("weights_fake", weights_fake, loss_fake)
    total = (w_real * loss_real).mean() + (w_fake * loss_fake).mean()
    return total / max(alpha, 1.0) if reduction == "var" else total


def var_row_weights(uncond_mask: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row weights of the official VAR trainer for `reduce_loss` (NVlabs/DDO `VAR_DDOTrainer.train_step`).

    Conditional rows keep real weight 1 and fake weight 1 (i.e. α, since α is inside loss_fake);
    label-dropped rows get real weight max(α, 1) and fake weight 0 (α = 0 on the unconditional part).
    uncond_mask: bool [B]. Returns (weights_real [B], weights_fake [B]) in float32.
    """
    alpha = _check_positive("alpha", alpha)
    if not isinstance(uncond_mask, torch.Tensor) or uncond_mask.dtype != torch.bool or uncond_mask.ndim != 1:
        raise ValueError("uncond_mask must be a 1-D bool tensor [B], found "
                         f"{getattr(uncond_mask, 'dtype', type(uncond_mask).__name__)} "
                         f"{tuple(getattr(uncond_mask, 'shape', ()))}")
    ones = torch.ones(uncond_mask.shape, dtype=torch.float32, device=uncond_mask.device)
    weights_real = torch.where(uncond_mask, max(alpha, 1.0) * ones, ones)
    weights_fake = torch.where(uncond_mask, 0.0 * ones, ones)
    return weights_real, weights_fake


@torch.no_grad()
def discriminator_stats(
    logr_real: torch.Tensor,  # [B] log-ratios on data samples
    logr_fake: torch.Tensor,  # [B] log-ratios on reference samples (row i paired with real row i)
    beta: float,
    *,
    offset: float = 0.0,
) -> dict[str, float]:
    """Health signals of the implicit discriminator σ(β·r + c) (logged by NVlabs/DDO's VAR trainer).

    accuracy: mean(r_real > r_fake) over paired rows; real_accuracy: mean(σ(β·r_real + c) > ½);
    fake_accuracy: mean(σ(β·r_fake + c) < ½); margin: mean(r_real) − mean(r_fake); plus means and
    (population) standard deviations of both log-ratios.
    """
    logr_real, logr_fake = _check_pair(logr_real, logr_fake)
    beta = _check_positive("beta", beta)
    offset = _as_offset(offset, logr_real.dtype)
    logit_real = beta * logr_real + offset  # [B]
    logit_fake = beta * logr_fake + offset  # [B]
    return {
        "accuracy": (logr_real > logr_fake).double().mean().item(),
        "real_accuracy": (logit_real > 0).double().mean().item(),
        "fake_accuracy": (logit_fake < 0).double().mean().item(),
        "margin": (logr_real.mean() - logr_fake.mean()).item(),
        "logr_real_mean": logr_real.mean().item(),
        "logr_real_std": logr_real.std(correction=0).item(),
        "logr_fake_mean": logr_fake.mean().item(),
        "logr_fake_std": logr_fake.std(correction=0).item(),
    }
