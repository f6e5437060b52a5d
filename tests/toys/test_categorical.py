"""Tests for ddo_lib.toys: exact categorical DDO oracles (docs/theory.md §2–§4, §8)."""
import math

import numpy as np
import pytest
import torch

from ddo_lib.objective import VARIANTS, nce_offset
from ddo_lib.toys.categorical import (
    alpha_star,
    collapse_threshold,
    geometric_target,
    population_loss,
    renyi_divergence,
    selfplay_contraction,
    solve_optimum,
)

LOG2 = math.log(2.0)
SEEDS = (0, 1, 2)
SIZES = {0: 5, 1: 7, 2: 10}
# f''(1) and κ_f = 1 + f'''(1)/f''(1) per variant, as tabulated in docs/theory.md §4.
THEORY_CURVATURE = {"bce": (0.5, -0.5), "kl": (1.0, 0.0), "rkl": (1.0, -1.0), "pearson": (2.0, 1.0),
                    "hellinger": (0.5, -0.5), "ns": (0.5, -1.5)}


def random_pair(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Full-support (p_ref, p_data) of size K ∈ {5, 7, 10} from Dirichlet(1.5)."""
    rng = np.random.default_rng(seed)
    size = SIZES[seed]
    return rng.dirichlet(np.full(size, 1.5)), rng.dirichlet(np.full(size, 1.5))


def random_q(seed: int, size: int) -> np.ndarray:
    return np.random.default_rng(100 + seed).dirichlet(np.full(size, 1.0))


def max_error(q: torch.Tensor, target) -> float:
    return (q - torch.as_tensor(target, dtype=torch.float64)).abs().max().item()


def max_log_error(q: torch.Tensor, target) -> float:
    """max |log q − log target|: resolves the tiny probabilities of sharp (small-β) targets."""
    return (q.log() - torch.as_tensor(target, dtype=torch.float64).log()).abs().max().item()


# ---------------------------------------------------------------- closed forms


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("beta", [0.05, 0.5, 1.0, 2.0])
def test_geometric_target_and_alpha_star_closed_forms(seed, beta):
    p_ref, p_data = random_pair(seed)
    unnormalised = p_ref ** (1 - 1 / beta) * p_data ** (1 / beta)
    z = unnormalised.sum()
    np.testing.assert_allclose(geometric_target(p_ref, p_data, beta).numpy(), unnormalised / z, rtol=1e-10)
    order = 1 / beta
    if beta == 1.0:
        expected_alpha = 1.0
    else:
        renyi = np.log(np.sum(p_data**order * p_ref ** (1 - order))) / (order - 1)
        expected_alpha = math.exp((1 - beta) * renyi)
    assert alpha_star(p_ref, p_data, beta) == pytest.approx(expected_alpha, rel=1e-10)
    assert alpha_star(p_ref, p_data, beta) == pytest.approx(z**beta, rel=1e-10)
    if beta < 1:
        assert alpha_star(p_ref, p_data, beta) > 1
    if beta > 1:
        assert alpha_star(p_ref, p_data, beta) < 1
    assert alpha_star(p_data, p_data, beta) == pytest.approx(1.0, abs=1e-12)


def test_renyi_divergence_limits():
    p_ref, p_data = random_pair(1)
    kl = float(np.sum(p_data * np.log(p_data / p_ref)))
    assert renyi_divergence(p_data, p_ref, 1.0) == pytest.approx(kl, rel=1e-12)
    assert renyi_divergence(p_data, p_ref, 1.0 + 1e-6) == pytest.approx(kl, rel=1e-5)
    assert renyi_divergence(p_data, p_ref, 2.0) > renyi_divergence(p_data, p_ref, 0.5)  # monotone in order


def test_threshold_and_contraction_values():
    assert collapse_threshold(0.5) == pytest.approx(1.25 / 0.75)
    assert collapse_threshold(0.02) == pytest.approx(1.01 / 0.99)
    assert collapse_threshold(2.0) == math.inf and collapse_threshold(3.0) == math.inf
    assert selfplay_contraction(2.0) == pytest.approx(0.5)
    assert selfplay_contraction(0.6) == pytest.approx(2 / 3)
    assert selfplay_contraction(0.4) == pytest.approx(1.5)
    assert selfplay_contraction(1.0) == 0.0


# ---------------------------------------------------------------- identities (test 2)


def f_jsd(u: torch.Tensor) -> torch.Tensor:
    """f of the f-GAN Jensen–Shannon form; D_f(p‖q) = 2·JS(p, q)."""
    return u * torch.log(u) - (u + 1) * torch.log((u + 1) / 2)


def f_jsd_prime(u: torch.Tensor) -> torch.Tensor:
    return torch.log(2 * u / (u + 1))


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    m = (p + q) / 2
    return 0.5 * float(np.sum(p * np.log(p / m)) + np.sum(q * np.log(q / m)))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_bce_minus_jensen_shannon_critic_is_two_log_two(seed, beta):
    """L_bce − L_JS = 2 log 2 for every q (α = 1), with L_JS the generic f-critic of the JS f."""
    p_ref, p_data = random_pair(seed)
    for trial in range(3):
        q = torch.as_tensor(random_q(10 * seed + trial, p_ref.size))
        rho = torch.exp(beta * (q.log() - torch.as_tensor(p_ref).log()))
        l_js = (-(torch.as_tensor(p_data) * f_jsd_prime(rho)).sum()
                + (torch.as_tensor(p_ref) * (rho * f_jsd_prime(rho) - f_jsd(rho))).sum())
        l_bce = population_loss(q, p_ref, p_data, alpha=1.0, beta=beta)
        assert (l_bce - l_js).item() == pytest.approx(2 * LOG2, abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_bce_optimum_value_is_two_log_two_minus_two_js(seed):
    """At β = α = 1: min_q L_bce = L_bce(p_data) = 2 log 2 − 2·JS(p_data, p_ref) (Bregman form, docs/theory.md §3)."""
    p_ref, p_data = random_pair(seed)
    optimum_value = 2 * LOG2 - 2 * jensen_shannon(p_data, p_ref)
    assert population_loss(p_data, p_ref, p_data, alpha=1.0, beta=1.0).item() == pytest.approx(
        optimum_value, abs=1e-12)
    for trial in range(3):
        q = random_q(10 * seed + trial, p_ref.size)
        assert population_loss(q, p_ref, p_data, alpha=1.0, beta=1.0).item() > optimum_value


@pytest.mark.parametrize("seed", SEEDS)
def test_kl_variant_is_mle_at_beta_one(seed):
    p_ref, p_data = random_pair(seed)
    constant = 1.0 + float(np.sum(p_data * np.log(p_ref)))
    for trial in range(3):
        q = random_q(10 * seed + trial, p_ref.size)
        nll = -float(np.sum(p_data * np.log(q)))
        loss = population_loss(q, p_ref, p_data, alpha=1.0, beta=1.0, variant="kl").item()
        assert loss - nll == pytest.approx(constant, abs=1e-12)


# ---------------------------------------------------------------- full-capacity optima (test 3)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_is_consistent_at_beta_one_alpha_one(seed, variant):
    p_ref, p_data = random_pair(seed)
    optimum = solve_optimum(p_ref, p_data, alpha=1.0, beta=1.0, variant=variant)
    assert optimum.converged and optimum.grad_norm < 1e-10
    assert max_error(optimum.q, p_data) < 1e-6
    assert optimum.min_hessian_eigenvalue > 0


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("alpha", [0.5, 1.0, 4.0, 30.0])
def test_nce_offset_recovers_data_at_beta_one(variant, alpha):
    """β = 1, c = −log α: the geometric target (= p_data at β = 1) for every α."""
    p_ref, p_data = random_pair(1)
    optimum = solve_optimum(p_ref, p_data, alpha=alpha, beta=1.0, variant=variant, offset=nce_offset(alpha))
    assert optimum.converged
    assert max_error(optimum.q, geometric_target(p_ref, p_data, 1.0)) < 1e-6


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("beta", [0.5, 2.0])
@pytest.mark.parametrize("alpha", [0.5, 1.0, 4.0, 30.0])
def test_learnable_offset_hits_geometric_target(seed, beta, alpha):
    p_ref, p_data = random_pair(seed)
    optimum = solve_optimum(p_ref, p_data, alpha=alpha, beta=beta, learn_offset=True)
    assert optimum.converged
    assert max_error(optimum.q, geometric_target(p_ref, p_data, beta)) < 1e-6
    log_z = math.log(float(np.sum(p_ref ** (1 - 1 / beta) * p_data ** (1 / beta))))
    assert optimum.offset == pytest.approx(beta * log_z - math.log(alpha), abs=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_learnable_offset_hits_geometric_target_for_every_variant(variant):
    p_ref, p_data = random_pair(0)
    optimum = solve_optimum(p_ref, p_data, alpha=4.0, beta=0.5, variant=variant, learn_offset=True)
    assert optimum.converged
    assert max_error(optimum.q, geometric_target(p_ref, p_data, 0.5)) < 1e-6


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_vanilla_at_alpha_star_hits_geometric_target(seed, beta):
    p_ref, p_data = random_pair(seed)
    target = geometric_target(p_ref, p_data, beta)
    optimum = solve_optimum(p_ref, p_data, alpha=alpha_star(p_ref, p_data, beta), beta=beta)
    assert optimum.converged
    assert max_error(optimum.q, target) < 1e-6 and max_log_error(optimum.q, target) < 1e-5
    # Off α*, vanilla DDO lands elsewhere.
    detuned = solve_optimum(p_ref, p_data, alpha=2 * alpha_star(p_ref, p_data, beta), beta=beta)
    assert detuned.converged and max_log_error(detuned.q, target) > 1e-2


@pytest.mark.parametrize("seed", SEEDS)
def test_vanilla_misses_data_at_alpha_three_and_offset_fixes_it(seed):
    p_ref, p_data = random_pair(seed)
    vanilla = solve_optimum(p_ref, p_data, alpha=3.0, beta=1.0)
    assert vanilla.converged
    assert max_error(vanilla.q, p_data) > 1e-2
    # Independent check of the vanilla solution: stationarity β[α p_r σ(λ) − p_d σ(−λ)] = μ·q (docs/theory.md §2).
    lam = vanilla.q.log() - torch.as_tensor(p_ref).log()
    lhs = 3.0 * torch.as_tensor(p_ref) * torch.sigmoid(lam) - torch.as_tensor(p_data) * torch.sigmoid(-lam)
    ratio = lhs / vanilla.q
    assert (ratio - ratio.mean()).abs().max() < 1e-8
    fixed = solve_optimum(p_ref, p_data, alpha=3.0, beta=1.0, offset=nce_offset(3.0))
    assert fixed.converged and max_error(fixed.q, p_data) < 1e-6


# ---------------------------------------------------------------- collapse (test 4)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("beta", [0.5, 0.2])
def test_collapse_threshold_is_where_data_stops_being_a_minimum(seed, beta):
    """p_ref = p_data: q = p_data is stationary for all α, a local minimum iff α < threshold."""
    _, p_data = random_pair(seed)
    threshold = collapse_threshold(beta)
    start = torch.as_tensor(np.log(p_data))
    below = solve_optimum(p_data, p_data, alpha=threshold * (1 - 1e-3), beta=beta, init_logits=start)
    above = solve_optimum(p_data, p_data, alpha=threshold * (1 + 1e-3), beta=beta, init_logits=start)
    assert below.converged and below.iterations == 0 and above.converged and above.iterations == 0
    assert below.min_hessian_eigenvalue > 0 > above.min_hessian_eigenvalue


@pytest.mark.parametrize("seed", SEEDS)
def test_stable_below_threshold_and_collapses_above(seed):
    _, p_data = random_pair(seed)
    rng = np.random.default_rng(50 + seed)
    start = torch.as_tensor(np.log(p_data) + 0.3 * rng.standard_normal(p_data.size))
    beta = 0.5  # threshold 1.667
    stable = solve_optimum(p_data, p_data, alpha=1.4, beta=beta, init_logits=start)
    assert stable.converged and max_error(stable.q, p_data) < 1e-6
    collapsed = solve_optimum(p_data, p_data, alpha=2.0, beta=beta, init_logits=start)
    at_data = population_loss(p_data, p_data, p_data, alpha=2.0, beta=beta).item()
    assert collapsed.converged and collapsed.min_hessian_eigenvalue > 0
    assert collapsed.loss < at_data - 1e-3  # a strictly better minimiser away from p_data
    assert max_error(collapsed.q, p_data) > 0.2  # which concentrates mass
    assert collapsed.q.max().item() > p_data.max() + 0.2
    # The learnable-offset variant has no such instability: it returns to p_data.
    offset = solve_optimum(p_data, p_data, alpha=2.0, beta=beta, learn_offset=True, init_logits=start)
    assert offset.converged and max_error(offset.q, p_data) < 1e-6 and offset.min_hessian_eigenvalue > 0


# ---------------------------------------------------------------- self-play (test 6)


@pytest.mark.parametrize("beta", [2.0, 0.6, 0.4])
def test_selfplay_log_error_contracts_by_one_minus_inverse_beta(beta):
    p_ref, p_data = random_pair(2)
    log_data = np.log(p_data)
    reference = p_ref
    errors = [np.log(reference) - log_data]
    for _ in range(2):
        optimum = solve_optimum(reference, p_data, alpha=3.0, beta=beta, learn_offset=True)
        assert optimum.converged
        reference = optimum.q.numpy() / optimum.q.numpy().sum()
        errors.append(np.log(reference) - log_data)
    centred = [error - error.mean() for error in errors]
    for before, after in zip(centred[:-1], centred[1:]):
        np.testing.assert_allclose(after, (1 - 1 / beta) * before, atol=1e-7)
        assert np.linalg.norm(after) / np.linalg.norm(before) == pytest.approx(selfplay_contraction(beta), rel=1e-6)


# ---------------------------------------------------------------- local analysis at θ = ref (test 5)


def low_rank_softmax(seed: int, size: int = 8, rank: int = 3):
    """logits = W θ with W [K, 3]; returns W, θ_ref and a data distribution."""
    rng = np.random.default_rng(200 + seed)
    weight = torch.as_tensor(rng.standard_normal((size, rank)))
    theta_ref = torch.as_tensor(0.5 * rng.standard_normal(rank))
    p_data = rng.dirichlet(np.full(size, 1.5))
    return weight, theta_ref, torch.as_tensor(p_data)


def model_loss(theta, weight, theta_ref, p_data, **loss_kwargs):
    p_ref = torch.softmax(weight @ theta_ref, dim=0)
    return population_loss(torch.softmax(weight @ theta, dim=0), p_ref, p_data, **loss_kwargs)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("beta", [0.05, 0.5, 2.0])
def test_gradient_at_reference_is_scaled_mle_and_alpha_free(variant, beta):
    weight, theta_ref, p_data = low_rank_softmax(0)
    p_ref = torch.softmax(weight @ theta_ref, dim=0)
    scores = weight - p_ref @ weight  # s(x) = ∇θ log p_θ(x) at θ_ref, [K, 3]
    f2, _ = THEORY_CURVATURE[variant]
    expected = -beta * f2 * (p_data @ scores)  # [3]
    step = 1e-5
    for alpha in (0.5, 3.0, 30.0):
        numeric = torch.zeros(3, dtype=torch.float64)
        for i in range(3):
            shift = torch.zeros(3, dtype=torch.float64)
            shift[i] = step
            kwargs = dict(alpha=alpha, beta=beta, variant=variant)
            plus = model_loss(theta_ref + shift, weight, theta_ref, p_data, **kwargs)
            minus = model_loss(theta_ref - shift, weight, theta_ref, p_data, **kwargs)
            numeric[i] = (plus - minus) / (2 * step)
        torch.testing.assert_close(numeric, expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("alpha, beta", [(0.5, 0.05), (30.0, 0.05), (1.0, 2.0), (4.0, 0.5)])
def test_hessian_at_reference(variant, alpha, beta):
    """∇²L = β f''(1)·[H_MLE − βκ E_data[s sᵀ] − α(1 − β(1+κ)) F_ref]; at α = 1 this is the form of docs/theory.md §4,
    β f''(1)·[H_MLE + (β−1) F_ref − βκ ΔF], and for bce (β/2)·[H_MLE + (β/2) E_data[s sᵀ] − α(1−β/2) F_ref]."""
    weight, theta_ref, p_data = low_rank_softmax(1)
    p_ref = torch.softmax(weight @ theta_ref, dim=0)
    scores = weight - p_ref @ weight  # [K, 3]
    fisher_ref = scores.T @ (p_ref[:, None] * scores)
    second_moment_data = scores.T @ (p_data[:, None] * scores)
    h_mle = fisher_ref  # −∇² log p_θ(x) = Cov_{p_θ}(W) for every x in a softmax
    f2, kappa = THEORY_CURVATURE[variant]
    expected = beta * f2 * (h_mle - beta * kappa * second_moment_data
                            - alpha * (1 - beta * (1 + kappa)) * fisher_ref)
    hessian = torch.autograd.functional.hessian(
        lambda theta: model_loss(theta, weight, theta_ref, p_data, alpha=alpha, beta=beta, variant=variant),
        theta_ref.clone())
    torch.testing.assert_close(hessian, expected, rtol=1e-8, atol=1e-10)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("p_ref, p_data, match", [
    ([0.5, 0.5], [0.2, 0.2, 0.6], "same K"),
    ([0.5, 0.6], [0.5, 0.5], "sum to 1"),
    ([1.0, 0.0], [0.5, 0.5], "full support"),
    ([[0.5, 0.5]], [0.5, 0.5], "1-D"),
])
def test_distribution_validation(p_ref, p_data, match):
    with pytest.raises(ValueError, match=match):
        geometric_target(p_ref, p_data, 1.0)


def test_argument_validation():
    p = [0.25, 0.75]
    with pytest.raises(ValueError, match="beta"):
        alpha_star(p, p, 0.0)
    with pytest.raises(ValueError, match="beta"):
        collapse_threshold(-1.0)
    with pytest.raises(ValueError, match="alpha"):
        solve_optimum(p, p, alpha=0.0, beta=1.0)
    with pytest.raises(ValueError, match="bce, kl"):
        solve_optimum(p, p, alpha=1.0, beta=1.0, variant="wgan")
    with pytest.raises(ValueError, match="init_logits"):
        solve_optimum(p, p, alpha=1.0, beta=1.0, init_logits=torch.zeros(3))
    with pytest.raises(ValueError, match="q must"):
        population_loss([0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [0.2, 0.3, 0.5], alpha=1.0, beta=1.0)
