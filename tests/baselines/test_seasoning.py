"""Seasoning tilts: conjugate identities, the KL tilt (Pythagorean) identity, SIR / rejection convergence."""
import math

import pytest
import scipy.stats
import torch

from ddo_lib.baselines.seasoning import (
    DIVERGENCES,
    conjugate_derivative,
    effective_sample_size,
    fit_exponential_tilt,
    kl_divergence,
    optimal_critic,
    refine_images,
    rejection_indices,
    sir_indices,
    tilt_categorical,
    tilt_identity,
    tilt_log_weights,
)
from ddo_lib.toys.categorical import geometric_target

K = 12


def dirichlet(seed, k=K):
    generator = torch.Generator().manual_seed(seed)
    x = -torch.log(torch.rand(k, generator=generator, dtype=torch.float64))  # Exp(1) ⇒ Dirichlet(1, …, 1)
    return x / x.sum()


@pytest.fixture(scope="module")
def toy():
    p, q = dirichlet(0), dirichlet(1)
    features = torch.randn(K, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    return p, q, features


def total_variation(counts, target):
    return 0.5 * (counts / counts.sum() - target).abs().sum().item()


# ----------------------------------------------------------------------------------------------------
# Tilt functions per f-divergence.

@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_tilt_at_optimal_critic_is_the_density_ratio(divergence):
    log_ratio = torch.linspace(-4, 4, 41, dtype=torch.float64)
    tilt = conjugate_derivative(optimal_critic(log_ratio, divergence), divergence)
    torch.testing.assert_close(tilt, log_ratio.exp(), rtol=1e-10, atol=0)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_conjugate_derivative_matches_numerical_legendre_transform(divergence):
    """(f*)′(t) = argmax_u [t·u − f(u)], checked by a dense grid search over u (independent of the table)."""
    f = {"kl": lambda u: u * u.log(), "rkl": lambda u: -u.log(), "pearson": lambda u: (u - 1) ** 2,
         "hellinger": lambda u: (u.sqrt() - 1) ** 2,
         "js": lambda u: u * u.log() - (u + 1) * ((u + 1) / 2).log(),
         "gan": lambda u: u * u.log() - (u + 1) * (u + 1).log()}[divergence]
    u = torch.logspace(-3, 2, 200001, dtype=torch.float64)
    critic = optimal_critic(torch.tensor([-1.5, -0.2, 0.7, 2.0], dtype=torch.float64), divergence)
    argmax = u[(critic[:, None] * u - f(u)).argmax(dim=1)]
    torch.testing.assert_close(conjugate_derivative(critic, divergence), argmax, rtol=1e-3, atol=0)


def test_bce_logit_gives_density_ratio_tilt():
    logit = torch.tensor([-3.0, 0.0, 2.5], dtype=torch.float64)
    d = torch.sigmoid(logit)
    torch.testing.assert_close(conjugate_derivative(d.log(), "gan"), d / (1 - d))
    torch.testing.assert_close(tilt_log_weights(logit).exp(), d / (1 - d))


def test_tempered_tilt_is_ddo_geometric_target():
    p, q = dirichlet(3), dirichlet(4)
    for beta in (0.5, 2.0, 20.0):
        tilted = tilt_categorical(q, tilt_log_weights(p.log() - q.log(), exponent=1 / beta))
        torch.testing.assert_close(tilted, geometric_target(q, p, beta), rtol=1e-12, atol=0)


def test_clipped_tilt_caps_weights():
    logit = torch.tensor([-2.0, 0.5, 3.0, 7.0])
    torch.testing.assert_close(tilt_log_weights(logit, exponent=0.5, clip=1.0), torch.tensor([-1.0, 0.25, 1.0, 1.0]))


# ----------------------------------------------------------------------------------------------------
# KL tilt identity (docs/theory.md §6, §8).

def test_i_projection_satisfies_the_tilt_identity(toy):
    p, q, features = toy
    logit = fit_exponential_tilt(p, q, features)
    tilted = tilt_categorical(q, logit)
    torch.testing.assert_close(features.T @ tilted, features.T @ p, rtol=0, atol=1e-12)  # moment matching
    identity = tilt_identity(p, q, logit)
    assert identity.gain == pytest.approx(identity.tilt_kl, abs=1e-10)
    assert abs(identity.moment_gap) < 1e-10
    assert identity.tilt_kl > 1e-3  # a non-trivial tilt: the identity is not 0 = 0
    assert identity.gain == pytest.approx(kl_divergence(p, q) - kl_divergence(p, tilted), abs=1e-14)


def test_exact_log_ratio_satisfies_the_tilt_identity(toy):
    p, q, _ = toy
    identity = tilt_identity(p, q, p.log() - q.log())
    assert identity.gain == pytest.approx(kl_divergence(p, q), abs=1e-12)
    assert identity.gain == pytest.approx(identity.tilt_kl, abs=1e-12)


@pytest.mark.parametrize("scale", [0.5, 1.5])
def test_tilt_identity_fails_for_a_non_optimal_logit(toy, scale):
    p, q, features = toy
    logit = scale * fit_exponential_tilt(p, q, features)
    identity = tilt_identity(p, q, logit)
    assert abs(identity.gain - identity.tilt_kl) > 1e-3
    assert identity.gain - identity.tilt_kl == pytest.approx(identity.moment_gap, abs=1e-12)


# ----------------------------------------------------------------------------------------------------
# Samplers converge to the exact tilt.

@pytest.fixture(scope="module")
def tilt_case():
    q = dirichlet(5, k=6)
    logit = torch.randn(6, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    return q, logit, tilt_categorical(q, logit)


def test_sir_converges_to_the_exact_tilt(tilt_case):
    q, logit, exact = tilt_case
    generator = torch.Generator().manual_seed(0)
    candidates = torch.multinomial(q, 200_000, replacement=True, generator=generator)  # [M] categories
    index = sir_indices(logit[candidates], 100_000, generator)
    counts = torch.bincount(candidates[index], minlength=6).double()
    assert total_variation(counts, exact) < 0.01
    wrong = torch.bincount(candidates[sir_indices(-logit[candidates], 100_000, generator)], minlength=6)
    assert total_variation(wrong.double(), exact) > 0.1  # the test can fail: a wrong tilt is far away


def test_rejection_sampling_is_exact(tilt_case):
    q, logit, exact = tilt_case
    generator = torch.Generator().manual_seed(1)
    candidates = torch.multinomial(q, 100_000, replacement=True, generator=generator)
    kept = candidates[rejection_indices(logit[candidates], generator, log_bound=logit.max().item())]
    counts = torch.bincount(kept, minlength=6).double()
    statistic = ((counts - len(kept) * exact) ** 2 / (len(kept) * exact)).sum().item()
    assert statistic < scipy.stats.chi2.ppf(0.999, df=5)  # i.i.d. draws from q̃: Pearson χ² test
    acceptance = len(kept) / len(candidates)  # = E_q[w]/M
    assert acceptance == pytest.approx((q * logit.exp()).sum().item() / logit.exp().max().item(), abs=0.005)


def test_effective_sample_size_limits():
    assert effective_sample_size(torch.zeros(50)) == pytest.approx(50)
    assert effective_sample_size(torch.tensor([0.0, -1e3, -1e3])) == pytest.approx(1.0)
    w = torch.tensor([1.0, 2.0, 3.0])
    assert effective_sample_size(w.log()) == pytest.approx(36 / 14)


def test_refine_images_prefers_high_logits_and_keeps_class_shares():
    images = torch.arange(40, dtype=torch.uint8).reshape(40, 1, 1, 1).expand(40, 1, 2, 2).contiguous()
    labels = torch.arange(40) % 4
    logits = torch.where(torch.arange(40) < 20, 4.0, -4.0)  # rows 0..19 are "real-looking"
    refined = refine_images(images, logits, 100, torch.Generator().manual_seed(0), labels=labels)
    assert refined.images.shape == (100, 1, 2, 2) and refined.images.dtype == torch.uint8
    assert torch.equal(refined.images[:, 0, 0, 0].long(), refined.index)
    assert torch.equal(torch.bincount(refined.labels, minlength=4), torch.full((4,), 25))
    share_high = (refined.index < 20).double().mean().item()
    assert share_high == pytest.approx(math.exp(4) / (math.exp(4) + math.exp(-4)), abs=0.02)
    plain = refine_images(images, logits, 10, torch.Generator().manual_seed(0), replacement=False)
    assert plain.labels is None and len(set(plain.index.tolist())) == 10
    assert refine_images(images, logits, 10, torch.Generator().manual_seed(0), exponent=0.0).effective_sample_size \
        == pytest.approx(40)


# ----------------------------------------------------------------------------------------------------
# Bad inputs.

def test_bad_inputs_raise():
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="unknown divergence"):
        optimal_critic(torch.zeros(2), "wasserstein")
    with pytest.raises(ValueError, match="lie in"):
        conjugate_derivative(torch.tensor([0.5]), "gan")
    with pytest.raises(ValueError, match="finite"):
        tilt_log_weights(torch.tensor([0.0, math.nan]))
    with pytest.raises(ValueError, match="exponent"):
        tilt_log_weights(torch.zeros(2), exponent=-1.0)
    with pytest.raises(ValueError, match="1-D"):
        sir_indices(torch.zeros(2, 2), 3, generator)
    with pytest.raises(ValueError, match="num_out"):
        sir_indices(torch.zeros(3), 4, generator, replacement=False)
    with pytest.raises(TypeError, match="Generator"):
        sir_indices(torch.zeros(3), 1, 0)
    with pytest.raises(ValueError, match="log_bound"):
        rejection_indices(torch.tensor([0.0, 2.0]), generator, log_bound=1.0)
    with pytest.raises(ValueError, match="probability vector"):
        tilt_identity(torch.tensor([0.5, 0.6]), torch.tensor([0.5, 0.5]), torch.zeros(2))
    with pytest.raises(ValueError, match="features"):
        fit_exponential_tilt(dirichlet(0), dirichlet(1), torch.zeros(K + 1, 2))
    images = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    with pytest.raises(ValueError, match="one value per image"):
        refine_images(images, torch.zeros(3), 2, generator)
    with pytest.raises(ValueError, match="uint8"):
        refine_images(images.float(), torch.zeros(4), 2, generator)
    with pytest.raises(ValueError, match="labels"):
        refine_images(images, torch.zeros(4), 2, generator, labels=torch.zeros(3, dtype=torch.int64))
