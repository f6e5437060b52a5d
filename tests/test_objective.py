"""Tests for ddo_lib.objective: DDO loss family, reductions and discriminator statistics."""
import math

import pytest
import torch

from ddo_lib.objective import (
    CURVATURE,
    VARIANTS,
    ddo_loss,
    discriminator_stats,
    nce_offset,
    reduce_loss,
    var_row_weights,
)

LOG2 = math.log(2.0)

# Independent oracle: each variant's f and f′ in closed form (docs/theory.md §3). The generic critic is
# real term −f′(ρ), fake term ρ·f′(ρ) − f(ρ), with ρ = e^λ.
F_AND_DERIVATIVE = {
    "bce": (lambda u: u * torch.log(u) - (u + 1) * torch.log(u + 1), lambda u: torch.log(u / (u + 1))),
    "kl": (lambda u: u * torch.log(u), lambda u: torch.log(u) + 1),
    "rkl": (lambda u: -torch.log(u), lambda u: -1 / u),
    "pearson": (lambda u: (u - 1) ** 2, lambda u: 2 * (u - 1)),
    "hellinger": (lambda u: (u.sqrt() - 1) ** 2, lambda u: 1 - u.rsqrt()),
    "ns": (lambda u: (1 + u) * torch.log((1 + u) / (2 * u)),
           lambda u: torch.log((1 + u) / (2 * u)) - 1 / u),
}

# Per-pair loss at r ≡ 0, c = 0 as a function of α.
REFERENCE_CONSTANT = {
    "bce": lambda alpha: (1 + alpha) * LOG2,
    "kl": lambda alpha: alpha,
    "rkl": lambda alpha: 1.0,
    "pearson": lambda alpha: alpha - 2.0,
    "hellinger": lambda alpha: 1.0 + alpha,
    "ns": lambda alpha: 1.0 - (1 + alpha) * LOG2,
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("alpha", [0.5, 1.0, 4.0, 30.0])
def test_loss_at_reference_is_the_variant_constant(variant, alpha):
    zeros = torch.zeros(5)
    loss_real, loss_fake = ddo_loss(zeros, zeros, alpha=alpha, beta=0.05, variant=variant)
    assert loss_real.shape == loss_fake.shape == (5,)
    assert loss_real.dtype == torch.float32
    torch.testing.assert_close(loss_real + loss_fake, torch.full((5,), REFERENCE_CONSTANT[variant](alpha)),
                               rtol=1e-6, atol=1e-6)


def test_bce_is_the_paper_loss():
    generator = torch.Generator().manual_seed(0)
    logr_real = 3 * torch.randn(64, generator=generator, dtype=torch.float64)
    logr_fake = 3 * torch.randn(64, generator=generator, dtype=torch.float64)
    alpha, beta, c = 4.0, 0.3, -0.7
    loss_real, loss_fake = ddo_loss(logr_real, logr_fake, alpha=alpha, beta=beta, offset=c)
    expected_real = -torch.log(torch.sigmoid(beta * logr_real + c))
    expected_fake = -alpha * torch.log(1 - torch.sigmoid(beta * logr_fake + c))
    torch.testing.assert_close(loss_real, expected_real, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss_fake, expected_fake, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_equals_generic_f_critic_up_to_constants(variant):
    f, f_prime = F_AND_DERIVATIVE[variant]
    lam = torch.linspace(-4, 4, 81, dtype=torch.float64)
    rho = lam.exp()
    alpha = 2.5
    loss_real, loss_fake = ddo_loss(lam, lam, alpha=alpha, beta=1.0, variant=variant)
    gap_real = loss_real - (-f_prime(rho))
    gap_fake = loss_fake / alpha - (rho * f_prime(rho) - f(rho))
    assert (gap_real - gap_real[0]).abs().max() < 1e-10
    assert (gap_fake - gap_fake[0]).abs().max() < 1e-10


@pytest.mark.parametrize("variant", VARIANTS)
def test_curvature_constants_match_f(variant):
    _, f_prime = F_AND_DERIVATIVE[variant]
    h = torch.tensor(1e-4, dtype=torch.float64)
    one = torch.tensor(1.0, dtype=torch.float64)
    f2 = (f_prime(one + h) - f_prime(one - h)) / (2 * h)
    f3 = (f_prime(one + h) - 2 * f_prime(one) + f_prime(one - h)) / h**2
    f2_expected, kappa_expected = CURVATURE[variant]
    assert abs(f2.item() - f2_expected) < 1e-6
    assert abs(1 + (f3 / f2).item() - kappa_expected) < 1e-5


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("clamp", [None, 10.0])
def test_finite_when_beta_r_overflows(variant, clamp):
    logr_real = torch.tensor([1e6, -1e6, 0.0], requires_grad=True)
    logr_fake = torch.tensor([-1e6, 1e6, 0.0], requires_grad=True)
    loss_real, loss_fake = ddo_loss(logr_real, logr_fake, alpha=4.0, beta=1.0, variant=variant, clamp=clamp)
    assert torch.isfinite(loss_real).all() and torch.isfinite(loss_fake).all()
    (loss_real + loss_fake).mean().backward()
    assert torch.isfinite(logr_real.grad).all() and torch.isfinite(logr_fake.grad).all()


def test_bce_overflow_values_are_exact():
    logr = torch.tensor([1e6, -1e6])
    loss_real, loss_fake = ddo_loss(logr, logr, alpha=2.0, beta=1.0)
    torch.testing.assert_close(loss_real, torch.tensor([0.0, 1e6]))
    torch.testing.assert_close(loss_fake, torch.tensor([2e6, 0.0]))


def test_clamp_caps_exponent_arguments():
    logr = torch.tensor([10.0, -10.0, 1.0], dtype=torch.float64, requires_grad=True)
    _, loss_fake = ddo_loss(logr, logr, alpha=3.0, beta=1.0, variant="kl", clamp=5.0)
    torch.testing.assert_close(loss_fake, 3.0 * torch.tensor([5.0, -5.0, 1.0], dtype=torch.float64).exp())
    loss_fake.sum().backward()
    torch.testing.assert_close(logr.grad, torch.tensor([0.0, 0.0, 3.0 * math.e], dtype=torch.float64))


def test_learnable_offset_tensor():
    generator = torch.Generator().manual_seed(1)
    logr_real, logr_fake = torch.randn(2, 16, generator=generator)
    offset = torch.tensor(-0.4, requires_grad=True)
    loss_real, loss_fake = ddo_loss(logr_real, logr_fake, alpha=3.0, beta=0.5, offset=offset)
    expected_real, expected_fake = ddo_loss(logr_real, logr_fake, alpha=3.0, beta=0.5, offset=-0.4)
    torch.testing.assert_close(loss_real, expected_real)
    torch.testing.assert_close(loss_fake, expected_fake)
    (loss_real + loss_fake).mean().backward()
    # ∂/∂c of −logσ(λ_r) − α·logσ(−λ_f) is −σ(−λ_r) + α·σ(λ_f).
    lam_real, lam_fake = 0.5 * logr_real - 0.4, 0.5 * logr_fake - 0.4
    expected_grad = (-torch.sigmoid(-lam_real) + 3.0 * torch.sigmoid(lam_fake)).mean()
    torch.testing.assert_close(offset.grad, expected_grad)


def test_nce_offset():
    assert nce_offset(4.0) == pytest.approx(-math.log(4.0), abs=1e-15)
    assert nce_offset(1.0) == 0.0


def test_dtypes():
    logr = torch.zeros(3, dtype=torch.float16)
    assert ddo_loss(logr, logr, alpha=1.0, beta=1.0)[0].dtype == torch.float32
    logr = torch.zeros(3, dtype=torch.float64)
    assert ddo_loss(logr, logr, alpha=1.0, beta=1.0)[1].dtype == torch.float64


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(logr_real=torch.zeros(2, 3), logr_fake=torch.zeros(2, 3)), ValueError, "1-D"),
    (dict(logr_real=torch.zeros(3), logr_fake=torch.zeros(4)), ValueError, "same shape"),
    (dict(logr_real=torch.zeros(0), logr_fake=torch.zeros(0)), ValueError, "B >= 1"),
    (dict(logr_real=[0.0], logr_fake=torch.zeros(1)), TypeError, "torch.Tensor"),
    (dict(logr_real=torch.zeros(3, dtype=torch.long), logr_fake=torch.zeros(3)), TypeError, "floating"),
    (dict(alpha=0.0), ValueError, "alpha"),
    (dict(alpha=-1.0), ValueError, "alpha"),
    (dict(beta=0.0), ValueError, "beta"),
    (dict(beta=float("nan")), ValueError, "beta"),
    (dict(variant="hinge"), ValueError, "bce, kl, rkl, pearson, hellinger, ns"),
    (dict(offset=torch.zeros(3)), ValueError, "scalar"),
    (dict(clamp=-1.0), ValueError, "clamp"),
])
def test_ddo_loss_validation(kwargs, error, match):
    arguments = dict(logr_real=torch.zeros(3), logr_fake=torch.zeros(3), alpha=1.0, beta=1.0)
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        ddo_loss(arguments.pop("logr_real"), arguments.pop("logr_fake"), **arguments)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 4.0, 30.0])
def test_reductions_at_reference(alpha):
    zeros = torch.zeros(8)
    loss_real, loss_fake = ddo_loss(zeros, zeros, alpha=alpha, beta=0.02)
    paper = reduce_loss(loss_real, loss_fake, reduction="mean", alpha=alpha)
    official = reduce_loss(loss_real, loss_fake, reduction="var", alpha=alpha)
    assert paper.item() == pytest.approx((1 + alpha) * LOG2, rel=1e-6)
    assert official.item() == pytest.approx((1 + alpha) * LOG2 / max(alpha, 1.0), rel=1e-6)


def test_var_reduction_with_label_dropout_matches_official_formula():
    generator = torch.Generator().manual_seed(2)
    gap_real, gap_fake = 5 * torch.randn(2, 10, generator=generator, dtype=torch.float64)
    uncond = torch.tensor([True, False] * 5)
    alpha, beta = 20.0, 0.02
    # Official VAR trainer (NVlabs/DDO `VAR_DDOTrainer.train_step`) row weights, written out by hand.
    w_real = torch.where(uncond, max(alpha, 1.0), 1.0).double()
    w_fake = torch.where(uncond, 0.0, alpha).double()
    expected = (-(w_real * torch.nn.functional.logsigmoid(beta * gap_real)).mean()
                - (w_fake * torch.nn.functional.logsigmoid(-beta * gap_fake)).mean()) / max(alpha, 1.0)
    loss_real, loss_fake = ddo_loss(gap_real, gap_fake, alpha=alpha, beta=beta)
    weights_real, weights_fake = var_row_weights(uncond, alpha)
    got = reduce_loss(loss_real, loss_fake, reduction="var", alpha=alpha,
                      weights_real=weights_real, weights_fake=weights_fake)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(reduction="sum"), ValueError, "mean, var"),
    (dict(weights_real=torch.ones(3)), ValueError, "shape"),
    (dict(weights_fake=[1.0] * 4), TypeError, "weights_fake"),
    (dict(alpha=0.0), ValueError, "alpha"),
])
def test_reduce_loss_validation(kwargs, error, match):
    arguments = dict(reduction="mean", alpha=1.0)
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        reduce_loss(torch.zeros(4), torch.zeros(4), **arguments)


def test_var_row_weights_validation():
    with pytest.raises(ValueError, match="bool"):
        var_row_weights(torch.zeros(4), 2.0)


def test_discriminator_stats():
    logr_real = torch.tensor([2.0, -1.0, 3.0, 0.5])
    logr_fake = torch.tensor([1.0, 0.0, -2.0, 1.5])
    stats = discriminator_stats(logr_real, logr_fake, beta=0.5)
    assert stats["accuracy"] == pytest.approx(0.5)  # rows 0 and 2
    assert stats["real_accuracy"] == pytest.approx(0.75)
    assert stats["fake_accuracy"] == pytest.approx(0.25)
    assert stats["margin"] == pytest.approx(1.125 - 0.125)
    assert stats["logr_real_mean"] == pytest.approx(1.125)
    assert stats["logr_fake_std"] == pytest.approx(logr_fake.std(correction=0).item())
    shifted = discriminator_stats(logr_real, logr_fake, beta=0.5, offset=-1.2)
    assert shifted["real_accuracy"] == pytest.approx(0.25)  # σ(0.5·r − 1.2) > ½ iff r > 2.4: row 2 only
    assert shifted["fake_accuracy"] == pytest.approx(1.0)
    assert all(isinstance(value, float) for value in stats.values())
