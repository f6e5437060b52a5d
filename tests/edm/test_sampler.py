"""EDM / EDM2 samplers: official fixtures, closed-form Gaussian oracles, seed and batch-size independence."""
import math

import pytest
import torch
from torch import nn

from ddo_lib.edm.precond import network_from_official
from ddo_lib.edm.random import StackedGenerators, latents_and_labels
from ddo_lib.edm.sampler import (
    edm2_sampler,
    edm_sampler,
    generate,
    time_steps,
    to_uint8,
)

MU, S, SIGMA_MAX, NUM_SAMPLES = 0.3, 0.5, 80.0, 4000
STOCHASTIC = dict(S_churn=40, S_min=0.05, S_max=50, S_noise=1.0)
SAMPLER_ARGS = ("num_steps", "sigma_min", "sigma_max", "rho", "S_churn", "S_min", "S_max", "S_noise")


# ----------------------------------------------------------------------------------------------------
# Analytic denoisers with the precond call convention net(x, sigma, class_labels).

class GaussianMixtureDenoiser(nn.Module):
    """Exact D(x; sigma) = E[y | y + sigma·n = x] for data y ~ sum_k pi_k N(mu_k, s^2) per pixel."""

    label_dim, sigma_min, sigma_max, sigma_data = 0, 0.0, float("inf"), 0.5

    def __init__(self, mus, pis=(1.0,), s=0.5, img_channels=1, img_resolution=2):
        super().__init__()
        self.mus = torch.tensor(mus, dtype=torch.float64)  # [K]
        self.log_pis, self.s = torch.tensor(pis, dtype=torch.float64).log(), s
        self.img_channels, self.img_resolution = img_channels, img_resolution

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def forward(self, x, sigma, class_labels=None):
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1, 1, 1)  # [B or 1, 1, 1, 1, 1]
        mus = self.mus.to(x.dtype)  # [K]
        var = self.s ** 2 + sigma ** 2
        x_k = x[..., None]  # [B, C, H, W, 1]
        logits = self.log_pis.to(x.dtype) - (x_k - mus) ** 2 / (2 * var)  # shared log(var) term cancels
        posterior_means = mus + self.s ** 2 / var * (x_k - mus)  # [B, C, H, W, K]
        return (logits.softmax(-1) * posterior_means).sum(-1)  # [B, C, H, W]


def gaussian(mu, s):
    return GaussianMixtureDenoiser([mu], [1.0], s)


def marginal_latents(mus, pis, s, sigma_max, n, generator):
    """Latents z with x_0 = sigma_max·z drawn from the exact noisy marginal at sigma_max: [n, 1, 2, 2]."""
    component = torch.multinomial(torch.tensor(pis, dtype=torch.float64), n * 4, True, generator=generator)
    x0 = torch.tensor(mus, dtype=torch.float64)[component] + math.sqrt(s ** 2 + sigma_max ** 2) * torch.randn(
        n * 4, generator=generator, dtype=torch.float64)
    return (x0 / sigma_max).reshape(n, 1, 2, 2)


def heun_variance(s, t_steps, S_churn, S_min, S_max, S_noise, var0):
    """Exact variance after the discrete Heun sampler for Gaussian data N(mu, s^2) (independent derivation).

    With f(t) = t/(s^2 + t^2), the ODE is dy/dt = f(t)·y for y = x - mu, so each Heun step multiplies y by
    a = 1 + h·(f(t_hat) + f(t_next)·(1 + h·f(t_hat)))/2 (h = t_next - t_hat; Euler at t_next = 0), after
    churn adds variance (t_hat^2 - t^2)·S_noise^2.
    """
    f = lambda t: t / (s ** 2 + t ** 2)  # noqa: E731
    num_steps, var = len(t_steps) - 1, var0
    for i in range(num_steps):
        t, t_next = float(t_steps[i]), float(t_steps[i + 1])
        gamma = min(S_churn / num_steps, math.sqrt(2) - 1) if S_min <= t <= S_max else 0.0
        t_hat = t * (1 + gamma)
        var = var + (t_hat ** 2 - t ** 2) * S_noise ** 2
        h = t_next - t_hat
        a = 1 + h * f(t_hat) if i == num_steps - 1 else 1 + h * (f(t_hat) + f(t_next) * (1 + h * f(t_hat))) / 2
        var = a ** 2 * var
    return var


# ----------------------------------------------------------------------------------------------------
# Official networks.

@pytest.fixture(scope="module")
def ddpmpp_net(official_fixture):
    d = official_fixture("edm_ddpmpp_tiny.pt")
    net = network_from_official(d["class_name"], d["init_kwargs"])
    net.load_state_dict(d["state_dict"], strict=True)
    return net.eval()


@pytest.fixture(scope="module")
def edm2_net(official_fixture):
    d = official_fixture("edm2_tiny.pt")
    net = network_from_official("Precond", d["init_kwargs"])
    net.load_state_dict(d["state_dict"], strict=True)
    return net.eval()


@pytest.fixture(scope="module")
def sampler_cases(official_fixture):
    return {case["name"]: case for case in official_fixture("edm_sampler_case.pt")["cases"]}


@pytest.fixture(scope="module")
def edm2_cases(official_fixture):
    return {case["name"]: case for case in official_fixture("edm2_tiny.pt")["sampler_cases"]}


class CountingRandn:
    """Replays recorded noise tensors in order and counts the calls."""

    def __init__(self, draws):
        self.draws, self.calls = list(draws), 0

    def __call__(self, x):
        draw = self.draws[self.calls]
        self.calls += 1
        assert draw.shape == x.shape and draw.dtype == x.dtype
        return draw


class SigmaRecorder(nn.Module):
    """Wraps a net and records the sigma of every call."""

    def __init__(self, net):
        super().__init__()
        self.net, self.sigmas = net, []
        for name in ("img_channels", "img_resolution", "label_dim", "sigma_min", "sigma_max", "round_sigma"):
            setattr(self, name, getattr(net, name))

    def forward(self, x, sigma, class_labels=None):
        self.sigmas.append(float(sigma))
        return self.net(x, sigma, class_labels)


# ----------------------------------------------------------------------------------------------------
# Time steps.

EDM_N18_HEAD = [80.0, 57.585985, 40.785574, 28.374585]
EDM_N18_TAIL = [0.022935, 0.007528, 0.002]


def test_time_steps_match_official(sampler_cases):
    for case in sampler_cases.values():
        kwargs = case["sampler_kwargs"]
        t_steps = time_steps(kwargs["num_steps"], kwargs["sigma_min"], kwargs["sigma_max"], kwargs["rho"])
        assert t_steps.dtype == torch.float64
        relative = (t_steps[:-1] - case["t_steps"][:-1]).abs() / case["t_steps"][:-1]
        assert relative.max() <= 1e-12 and t_steps[-1] == 0 == case["t_steps"][-1]


def test_time_steps_reference_values_n18():
    t_steps = time_steps(18)
    assert len(t_steps) == 19
    # The reference values are printed with 6 decimals: half a unit in the last place is 5e-7.
    torch.testing.assert_close(t_steps[:4], torch.tensor(EDM_N18_HEAD, dtype=torch.float64), rtol=0, atol=5e-7)
    torch.testing.assert_close(t_steps[-4:-1], torch.tensor(EDM_N18_TAIL, dtype=torch.float64), rtol=0, atol=5e-7)


def test_time_steps_rejects_bad_input():
    with pytest.raises(ValueError, match="num_steps"):
        time_steps(1)
    with pytest.raises(ValueError, match="sigma_min"):
        time_steps(5, sigma_min=80, sigma_max=1)


# ----------------------------------------------------------------------------------------------------
# EDM sampler against the official fixture. Measured bitwise equal on an idle machine, but oneDNN may
# pick another convolution kernel (another summation order) when the thread count or load changes: seen
# 4.5e-6 under load. The fixture README's tolerance for a different operation order is atol 1e-4.

def uint8_close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """uint8 images equal up to one grey level: a 1e-5 float difference can cross a rounding boundary."""
    return a.shape == b.shape and (a.int() - b.int()).abs().max().item() <= 1


@pytest.mark.parametrize("name", ["heun_deterministic_6steps", "stochastic_churn40_6steps"])
def test_edm_sampler_recorded_noise(ddpmpp_net, sampler_cases, name):
    case = sampler_cases[name]
    kwargs = {key: case["sampler_kwargs"][key] for key in SAMPLER_ARGS}
    randn = CountingRandn(case["randn_like_draws"])
    recorder = SigmaRecorder(ddpmpp_net)
    images = edm_sampler(recorder, case["latents"], case["class_labels"], randn_like=randn, **kwargs)
    assert images.dtype == torch.float64
    assert randn.calls == case["num_randn_like_calls"] == 2 * 3  # one draw per step, even with gamma = 0
    torch.testing.assert_close(torch.tensor(recorder.sigmas, dtype=torch.float64),
                               torch.tensor(case["net_call_sigmas"], dtype=torch.float64), rtol=1e-12, atol=0)
    max_abs = (images - case["images"]).abs().max().item()
    assert max_abs <= 1e-4, f"max|images - official| = {max_abs:.3g} (README tolerance 1e-4)"
    assert uint8_close(to_uint8(images), case["images_uint8"])


@pytest.mark.parametrize("name", ["heun_deterministic_6steps", "stochastic_churn40_6steps"])
def test_edm_sampler_seed_stream(ddpmpp_net, sampler_cases, name):
    case = sampler_cases[name]
    draws = latents_and_labels(case["seeds"], [3, 16, 16], label_dim=10)
    assert torch.equal(draws.latents, case["latents"])
    assert torch.equal(draws.class_idx, case["class_idx"])
    assert torch.equal(draws.labels, case["class_labels"])
    kwargs = {key: case["sampler_kwargs"][key] for key in SAMPLER_ARGS}
    images = edm_sampler(ddpmpp_net, draws.latents, draws.labels, randn_like=draws.generators.randn_like, **kwargs)
    torch.testing.assert_close(images, case["images"], rtol=0, atol=1e-4)  # fixture README tolerance


def test_generate_reproduces_fixture_with_label_override(ddpmpp_net, sampler_cases):
    case = sampler_cases["stochastic_churn40_6steps"]
    kwargs = {key: case["sampler_kwargs"][key] for key in SAMPLER_ARGS}
    drawn = generate(ddpmpp_net, case["seeds"], batch_size=1, **kwargs)
    # Explicit labels still consume the randint draw, so the churn noise stream is unchanged.
    explicit = generate(ddpmpp_net, case["seeds"], case["class_idx"], batch_size=2, **kwargs)
    assert drawn.dtype == torch.uint8
    assert uint8_close(drawn, case["images_uint8"]) and uint8_close(explicit, case["images_uint8"])
    other = generate(ddpmpp_net, case["seeds"], torch.tensor([1, 2]), batch_size=2, **kwargs)
    assert not torch.equal(other, case["images_uint8"])


def test_generate_batch_size_independent(ddpmpp_net):
    """Same seeds, batch 1 / 3 / all: only the net's batched float32 arithmetic differs (official code too).

    Measured on this random-weight net (|x| up to 12): max|float diff| 1.1e-4, one of 3840 uint8 pixels
    off by one level.
    """
    seeds = [11, 5, 2**32 + 7, 3, 9]
    kwargs = dict(num_steps=3, S_churn=10, S_min=0.05, S_max=50)
    runs = [generate(ddpmpp_net, seeds, batch_size=b, **kwargs).int() for b in (1, 3, len(seeds))]
    assert runs[0].shape == (5, 3, 16, 16)
    for other in runs[1:]:
        assert (other - runs[0]).abs().max() <= 1 and (other != runs[0]).sum() <= 4
    # Image i is a function of seed i alone: 2**32 + 7 and 7 share a generator state.
    alone = generate(ddpmpp_net, [7], batch_size=1, **kwargs).int()
    assert torch.equal(alone[0], runs[0][2])


def test_generate_batch_size_independent_analytic():
    """With an elementwise denoiser batching cannot change any arithmetic: uint8 images match exactly."""
    net, seeds = GaussianMixtureDenoiser([-0.5, 0.5], [0.5, 0.5], 0.3, img_channels=3, img_resolution=4), range(7)
    runs = [generate(net, seeds, batch_size=b, num_steps=6, **STOCHASTIC) for b in (1, 3, 7)]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    assert len(runs[0].unique()) > 50


def test_sampler_float_output_independent_of_batching():
    """With an elementwise denoiser, batching cannot change arithmetic: float64 outputs match bitwise."""
    net, seeds, kwargs = gaussian(0.3, 0.5), list(range(7)), dict(num_steps=4, **STOCHASTIC)

    def run(batch_seeds):
        draws = latents_and_labels(batch_seeds, [1, 2, 2], label_dim=0)
        return edm_sampler(net, draws.latents, randn_like=draws.generators.randn_like, **kwargs)

    pairs = torch.cat([run(seeds[i:i + 2]) for i in range(0, len(seeds), 2)])
    assert torch.equal(pairs, run(seeds))


# ----------------------------------------------------------------------------------------------------
# EDM2 sampler against the official fixture.

@pytest.mark.parametrize("name", ["heun_deterministic_5steps_guidance1", "stochastic_churn20_5steps_guidance1"])
def test_edm2_sampler_recorded_noise(edm2_net, edm2_cases, name):
    case = edm2_cases[name]
    kwargs = dict(case["sampler_kwargs"])
    randn = CountingRandn(case["randn_like_draws"])
    output = edm2_sampler(edm2_net, case["noise"], case["labels"], randn_like=randn, **kwargs)
    assert output.dtype == torch.float32
    assert randn.calls == case["num_randn_like_calls"]
    max_abs = (output - case["output"]).abs().max().item()
    assert max_abs <= 1e-4, f"max|output - official| = {max_abs:.3g} (README tolerance 1e-4)"


def test_edm2_sampler_seed_stream(edm2_net, edm2_cases):
    case = edm2_cases["stochastic_churn20_5steps_guidance1"]
    draws = latents_and_labels(case["seeds"], [3, 16, 16], label_dim=10)
    assert torch.equal(draws.latents, case["noise"]) and torch.equal(draws.class_idx, case["class_idx"])
    output = edm2_sampler(edm2_net, draws.latents, draws.labels, randn_like=draws.generators.randn_like,
                          **case["sampler_kwargs"])
    assert (output - case["output"]).abs().max() <= 1e-4
    images = generate(edm2_net, case["seeds"], batch_size=1, sampler="edm2", **case["sampler_kwargs"])
    assert uint8_close(images, to_uint8(case["output"]))


# ----------------------------------------------------------------------------------------------------
# Closed-form oracles: Gaussian data N(mu, s^2) with the exact denoiser.



def test_heun_deterministic_is_exact_linear_map():
    """For Gaussian data every path obeys x_N - mu = a·(x_0 - mu), a from the discrete Heun recursion."""
    latents = torch.randn(8, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_N = edm_sampler(gaussian(MU, S), latents)
    t_steps = time_steps(18)
    a = math.sqrt(heun_variance(S, t_steps, 0, 0, float("inf"), 1, 1.0))
    torch.testing.assert_close(x_N - MU, a * (latents * SIGMA_MAX - MU), rtol=1e-10, atol=1e-12)


NO_CHURN = dict(S_churn=0, S_min=0, S_max=float("inf"), S_noise=1)


def sample_moments(net, latents, generator, **kwargs):
    randn_like = lambda x: torch.randn(x.shape, generator=generator, dtype=x.dtype)  # noqa: E731
    return edm_sampler(net, latents, randn_like=randn_like, **kwargs).flatten()


@pytest.mark.parametrize("churn", [NO_CHURN, STOCHASTIC], ids=["deterministic", "stochastic"])
def test_heun_gaussian_discretisation_bias_vanishes(churn):
    """Variance bias of the discrete sampler for N(mu, 0.5^2); measured +11.4 % / +26.5 % at N = 18."""
    bias = [heun_variance(S, time_steps(n), **churn, var0=S ** 2 + SIGMA_MAX ** 2) / S ** 2 - 1
            for n in (18, 64, 256)]
    assert bias[0] > bias[1] > bias[2] > 0
    assert bias[0] <= 0.3 and bias[2] <= 5e-3


@pytest.mark.parametrize("num_steps", [18, 256])
@pytest.mark.parametrize("churn", [NO_CHURN, STOCHASTIC], ids=["deterministic", "stochastic"])
def test_heun_gaussian_moments(churn, num_steps):
    """Sample mean/variance of 4000 x 4 pixels match the discrete sampler's exact moments within 4 SE."""
    generator = torch.Generator().manual_seed(1)
    latents = marginal_latents([MU], [1.0], S, SIGMA_MAX, NUM_SAMPLES, generator)
    x = sample_moments(gaussian(MU, S), latents, generator, num_steps=num_steps, **churn)
    var_discrete = heun_variance(S, time_steps(num_steps), **churn, var0=S ** 2 + SIGMA_MAX ** 2)
    n = x.numel()
    assert abs(x.mean().item() - MU) <= 4 * math.sqrt(var_discrete / n)  # the discrete sampler keeps the mean
    assert abs(x.var().item() - var_discrete) <= 4 * var_discrete * math.sqrt(2 / (n - 1))
    if num_steps == 256:  # close to the data distribution itself
        assert abs(x.var().item() - S ** 2) <= 4 * S ** 2 * math.sqrt(2 / (n - 1)) + abs(var_discrete - S ** 2)


@pytest.mark.parametrize("churn", [NO_CHURN, STOCHASTIC], ids=["deterministic", "stochastic"])
def test_heun_mixture_moments(churn):
    """Two-component mixture with 256 steps: mean, variance and mode weight within Monte-Carlo error."""
    mus, pis, s = [-1.5, 0.5], [0.25, 0.75], 0.3  # mean 0, variance s^2 + 0.75 = 0.84
    generator = torch.Generator().manual_seed(2)
    latents = marginal_latents(mus, pis, s, SIGMA_MAX, NUM_SAMPLES, generator)
    x = sample_moments(GaussianMixtureDenoiser(mus, pis, s), latents, generator, num_steps=256, **churn)
    mean, var, n = 0.0, s ** 2 + 0.75, x.numel()
    bias = 5e-3 * var  # discretisation bias bound from the Gaussian case at 256 steps
    assert abs(x.mean().item() - mean) <= 4 * math.sqrt(var / n)
    kurtosis = (pis[0] * (mus[0] ** 4 + 6 * mus[0] ** 2 * s ** 2 + 3 * s ** 4)
                + pis[1] * (mus[1] ** 4 + 6 * mus[1] ** 2 * s ** 2 + 3 * s ** 4)) / var ** 2
    assert abs(x.var().item() - var) <= 4 * var * math.sqrt((kurtosis - 1) / n) + bias
    low_mode = (x < -0.5).double().mean().item()
    assert abs(low_mode - 0.25) <= 4 * math.sqrt(0.25 * 0.75 / n)


def test_edm2_guidance_endpoints_and_lerp():
    net, gnet = gaussian(0.4, 0.5), gaussian(-0.6, 0.5)
    noise = torch.randn(16, 1, 2, 2, generator=torch.Generator().manual_seed(3))
    plain = edm2_sampler(net, noise, num_steps=8)
    assert torch.equal(edm2_sampler(net, noise, gnet=gnet, guidance=1.0, num_steps=8), plain)
    assert torch.equal(edm2_sampler(net, noise, gnet=gnet, guidance=0.0, num_steps=8),
                       edm2_sampler(gnet, noise, num_steps=8))
    # Same-width Gaussians: lerp(D_gnet, D_net, w) is the exact denoiser of N(mu_g + w(mu - mu_g), s^2).
    guided = edm2_sampler(net, noise, gnet=gnet, guidance=2.0, num_steps=8)
    torch.testing.assert_close(guided, edm2_sampler(gaussian(1.4, 0.5), noise, num_steps=8), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="gnet"):
        edm2_sampler(net, noise, guidance=2.0, num_steps=8)


def test_edm2_matches_edm_when_deterministic_in_float64():
    net = gaussian(MU, S)
    latents = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    torch.testing.assert_close(edm2_sampler(net, latents, num_steps=18, dtype=torch.float64),
                               edm_sampler(net, latents), rtol=0, atol=1e-12)


def test_edm2_draws_only_inside_churn_window():
    randn = CountingRandn([torch.zeros(2, 1, 2, 2)] * 10)
    edm2_sampler(gaussian(MU, S), torch.zeros(2, 1, 2, 2), num_steps=10, S_churn=5, S_min=0.1, S_max=10,
                 randn_like=randn)
    t_steps = time_steps(10, dtype=torch.float32)[:-1]
    assert randn.calls == int(((t_steps >= 0.1) & (t_steps <= 10)).sum()) == 5


# ----------------------------------------------------------------------------------------------------
# Callback, quantisation, validation.

def test_callback_sees_every_step():
    seen = []
    out = edm_sampler(gaussian(MU, S), torch.zeros(2, 1, 2, 2), num_steps=5,
                      callback=lambda i, t_cur, t_next, x: seen.append((i, float(t_cur), float(t_next), x)))
    t_steps = time_steps(5)
    assert [step[0] for step in seen] == list(range(5))
    assert [step[1] for step in seen] == t_steps[:-1].tolist() and seen[-1][2] == 0.0
    assert torch.equal(seen[-1][3], out)


def test_to_uint8_truncates_and_clips():
    x = torch.tensor([-1.5, -1.0, 0.0, (10.9 - 128) / 127.5, 0.9999, 1.0, 2.0])
    assert to_uint8(x).tolist() == [0, 0, 128, 10, 255, 255, 255]
    with pytest.raises(TypeError):
        to_uint8(torch.zeros(2, dtype=torch.uint8))


def test_stacked_generators_rows_are_independent():
    full = StackedGenerators([4, 5, 6]).randn([3])
    assert torch.equal(full[1], StackedGenerators([5]).randn([3])[0])
    assert torch.equal(StackedGenerators([5 + 2**32]).randn([3]), StackedGenerators([5]).randn([3]))
    with pytest.raises(ValueError, match="batch"):
        StackedGenerators([1, 2]).randn_like(torch.zeros(3, 1))


def test_sampler_rejects_bad_input(ddpmpp_net):
    with pytest.raises(ValueError, match="latents"):
        edm_sampler(ddpmpp_net, torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="class_labels"):
        edm_sampler(ddpmpp_net, torch.zeros(2, 3, 16, 16), torch.zeros(2, 7))
    with pytest.raises(ValueError, match="sampler"):
        generate(ddpmpp_net, [0], batch_size=1, sampler="ddim")
    with pytest.raises(ValueError, match="one row per seed"):
        generate(ddpmpp_net, [0, 1], torch.tensor([3]), batch_size=1)
    with pytest.raises(ValueError, match="unconditional"):
        generate(gaussian(MU, S), [0], torch.tensor([0]), batch_size=1)
