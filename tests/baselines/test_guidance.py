"""Discriminator Guidance: analytic-Gaussian oracle, the EDM wrapper, discriminator training, bad inputs."""
import math

import pytest
import torch

from ddo_lib.baselines.guidance import (
    DiscriminatorConfig,
    GuidedDenoiser,
    NoisyDiscriminator,
    bce_terms,
    discriminator_logits,
    draw_sigma,
    measure_guidance_cost,
    train_discriminator,
)
from ddo_lib.edm.precond import EDMPrecond
from ddo_lib.edm.sampler import edm_sampler, generate, time_steps
from ddo_lib.toys.gaussian import (
    GaussianDenoiser,
    GaussianLogRatio,
    gaussian_ode_moments,
)

DATA = dict(mean=1.0, std=0.8)
MODEL = dict(mean=-0.5, std=0.3)
TINY_UNET = dict(model_type="SongUNet", model_channels=8, channel_mult=[1], num_blocks=1, attn_resolutions=[],
                 embedding_type="positional", encoder_type="standard", decoder_type="standard",
                 channel_mult_noise=1, resample_filter=[1, 1])


def heun_moments(mean, std, t_steps):
    """Exact mean and std after the deterministic EDM Heun sampler for data N(mean, std²) per pixel.

    Independent of the sampler code: y = x − mean obeys dy/dt = f(t)·y with f(t) = t/(std² + t²), so each
    Heun step multiplies y by a = 1 + h·(f(t) + f(t_next)·(1 + h·f(t)))/2 (Euler, a = 1 + h·f(t), into t = 0);
    the start is y_0 = t_0·z − mean.
    """
    f = lambda t: t / (std ** 2 + t ** 2)  # noqa: E731
    gain, n = 1.0, len(t_steps) - 1
    for i in range(n):
        t, t_next = float(t_steps[i]), float(t_steps[i + 1])
        h = t_next - t
        gain *= 1 + h * f(t) if i == n - 1 else 1 + h * (f(t) + f(t_next) * (1 + h * f(t))) / 2
    return mean * (1 - gain), gain * float(t_steps[0])


@pytest.fixture(scope="module")
def gaussians():
    data = GaussianDenoiser(**DATA, img_resolution=8)
    model = GaussianDenoiser(**MODEL, img_resolution=8)
    return data, model, GaussianLogRatio(data, model)


@pytest.fixture(scope="module")
def tiny_edm():
    torch.manual_seed(0)
    return EDMPrecond(img_resolution=8, img_channels=1, label_dim=3, **TINY_UNET).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def tiny_discriminator():
    torch.manual_seed(1)
    net = NoisyDiscriminator(channels=1, resolution=8, label_dim=3, width=8)
    return net.eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------------
# Oracle discriminator on Gaussians (docs/theory.md §8).

@pytest.mark.parametrize("sigma", [0.002, 0.3, 2.0, 80.0])
def test_oracle_guidance_gives_exact_data_denoiser(gaussians, sigma):
    data, model, oracle = gaussians
    x = 3 * torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    guided = GuidedDenoiser(model, oracle, weight=1.0)(x, torch.tensor(sigma, dtype=torch.float64))
    torch.testing.assert_close(guided, data(x, sigma), atol=1e-12, rtol=0)
    half = GuidedDenoiser(model, oracle, weight=0.5)(x, sigma)  # w scales the correction linearly
    torch.testing.assert_close(half, (model(x, sigma) + data(x, sigma)) / 2, atol=1e-12, rtol=0)


def test_heun_moment_oracle_agrees_with_the_exact_ode():
    for spec in (DATA, MODEL):  # 256 Heun steps ≈ the exact probability-flow ODE
        exact = gaussian_ode_moments(spec["mean"], spec["std"], 80.0)
        discrete = heun_moments(spec["mean"], spec["std"], time_steps(256))
        assert discrete == pytest.approx(exact, abs=2e-4)


@pytest.mark.parametrize("weight, target", [(1.0, "data"), (0.0, "model")])
def test_oracle_guided_sampler_reproduces_target_moments(gaussians, weight, target):
    data, model, oracle = gaussians
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1024, 1, 8, 8, generator=generator, dtype=torch.float64)  # 65,536 i.i.d. pixels
    x = edm_sampler(GuidedDenoiser(model, oracle, weight), latents, num_steps=18,
                    randn_like=lambda t: torch.zeros_like(t))
    spec = DATA if target == "data" else MODEL
    mean, std = heun_moments(spec["mean"], spec["std"], time_steps(18))
    n = x.numel()
    assert x.mean().item() == pytest.approx(mean, abs=5 * std / math.sqrt(n))
    assert x.std().item() == pytest.approx(std, rel=5 / math.sqrt(2 * n))
    # And within the 18-step discretisation error (≤ 7 % here) of the target distribution itself.
    assert x.mean().item() == pytest.approx(spec["mean"], abs=0.02)
    assert x.std().item() == pytest.approx(spec["std"], rel=0.1)


# ----------------------------------------------------------------------------------------------------
# The wrapper inside the EDM sampler.

def test_wrapper_exposes_the_denoiser_interface(tiny_edm, tiny_discriminator):
    guided = GuidedDenoiser(tiny_edm, tiny_discriminator, weight=2.0)
    for name in ("img_resolution", "img_channels", "label_dim", "sigma_min", "sigma_max", "sigma_data"):
        assert getattr(guided, name) == getattr(tiny_edm, name)
    sigma = torch.tensor([0.5, 3.0], dtype=torch.float64)
    assert torch.equal(guided.round_sigma(sigma), tiny_edm.round_sigma(sigma))


def test_zero_weight_is_bit_exact_in_generate(tiny_edm, tiny_discriminator):
    seeds = [3, 4, 5, 6]
    options = dict(batch_size=2, num_steps=4, S_churn=5.0)
    plain = generate(tiny_edm, seeds, **options)
    assert torch.equal(generate(GuidedDenoiser(tiny_edm, tiny_discriminator, 0.0), seeds, **options), plain)
    latents = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    a = edm_sampler(tiny_edm, latents, num_steps=3)
    b = edm_sampler(GuidedDenoiser(tiny_edm, tiny_discriminator, 0.0), latents, num_steps=3)
    assert torch.equal(a, b)


def test_guidance_under_no_grad_matches_the_correction_formula(tiny_edm, tiny_discriminator):
    guided = GuidedDenoiser(tiny_edm, tiny_discriminator, weight=2.0)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    labels = torch.eye(3)[[0, 2, 1]]
    with torch.no_grad():
        D_tilde = guided(x, torch.tensor(1.5, dtype=torch.float64), labels)
    # Independent finite-difference gradient of the logit, pixel by pixel (float64 central differences).
    eps, gradient = 1e-3, torch.zeros_like(x)
    for index in range(64):
        step = torch.zeros(64, dtype=torch.float64)
        step[index] = eps
        step = step.reshape(1, 1, 8, 8)
        difference = tiny_discriminator(x + step, 1.5, labels) - tiny_discriminator(x - step, 1.5, labels)
        gradient.view(3, 64)[:, index] = difference.double() / (2 * eps)
    expected = tiny_edm(x, 1.5, labels).double() + 2.0 * 1.5 ** 2 * gradient
    torch.testing.assert_close(D_tilde.double(), expected, atol=2e-3, rtol=0)


def test_guided_generate_changes_images_and_is_seed_deterministic(tiny_edm, tiny_discriminator):
    guided = GuidedDenoiser(tiny_edm, tiny_discriminator, weight=50.0)
    options = dict(batch_size=3, num_steps=4)
    first = generate(guided, [0, 1, 2], **options)
    assert torch.equal(first, generate(guided, [0, 1, 2], batch_size=1, num_steps=4))  # batch-size independent
    assert not torch.equal(first, generate(tiny_edm, [0, 1, 2], **options))


def test_guidance_window_switches_the_correction_off(tiny_edm, tiny_discriminator):
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    windowed = GuidedDenoiser(tiny_edm, tiny_discriminator, weight=3.0, sigma_low=1.0, sigma_high=10.0)
    assert torch.equal(windowed(x, 0.5), tiny_edm(x, 0.5))
    assert not torch.equal(windowed(x, 2.0), tiny_edm(x, 2.0))
    clipped = GuidedDenoiser(tiny_edm, tiny_discriminator, weight=3.0, logit_clip=1e-6)  # |λ| > bound: zero gradient
    logit = tiny_discriminator(x, 2.0)
    assert bool((logit.abs() > 1e-6).all())
    assert torch.equal(clipped(x, 2.0), tiny_edm(x, 2.0))


def test_measure_guidance_cost_reports_consistent_numbers(tiny_edm, tiny_discriminator):
    cost = measure_guidance_cost(GuidedDenoiser(tiny_edm, tiny_discriminator, 1.0), range(4), batch_size=4,
                                 num_steps=3, repeats=1)
    assert cost["nfe"] == 5 and cost["images"] == 4
    assert cost["ratio"] == pytest.approx(cost["seconds_per_image_guided"] / cost["seconds_per_image_unguided"])
    assert cost["seconds_per_image_unguided"] > 0 and cost["seconds_per_image_guided"] > 0  # timing: no ratio bound


# ----------------------------------------------------------------------------------------------------
# Discriminator training.

def separable_images(num, bright_top, generator):
    """uint8 [num, 1, 8, 8] noise images whose top (or bottom) half is bright."""
    images = torch.randint(0, 60, (num, 1, 8, 8), generator=generator, dtype=torch.uint8)
    rows = slice(0, 4) if bright_top else slice(4, 8)
    images[:, :, rows] += 180
    return images


def held_out_bce(net, real, fake, generator):
    sigma = torch.full((len(real),), 0.05)
    with torch.no_grad():
        noise = [0.05 * torch.randn(x.shape, generator=generator) for x in (real, fake)]
        logit_real = net(real.float() / 127.5 - 1 + noise[0], sigma)
        logit_fake = net(fake.float() / 127.5 - 1 + noise[1], sigma)
    return bce_terms(logit_real, logit_fake).mean().item() / 2  # per image


def test_training_reduces_bce_on_a_separable_toy():
    generator = torch.Generator().manual_seed(0)
    real, fake = separable_images(256, True, generator), separable_images(256, False, generator)
    cfg = DiscriminatorConfig(steps=20, batch_size=16, width=8, lr=3e-3, sigma_distribution="lognormal",
                              P_mean=-2.0, P_std=0.5, log_every=10)
    untrained = train_discriminator(real, fake, cfg=DiscriminatorConfig(steps=1, batch_size=2, width=8, lr=1e-12))[0]
    net, history = train_discriminator(real, fake, cfg=cfg)
    test_real, test_fake = separable_images(128, True, generator), separable_images(128, False, generator)
    before = held_out_bce(untrained, test_real, test_fake, torch.Generator().manual_seed(1))
    after = held_out_bce(net, test_real, test_fake, torch.Generator().manual_seed(1))
    assert before == pytest.approx(math.log(2), abs=0.1)
    assert after < 0.1
    assert [row["step"] for row in history] == [10, 20]
    assert history[-1]["loss"] < history[0]["loss"] and history[-1]["accuracy"] > 0.9
    assert not any(p.requires_grad for p in net.parameters()) and not net.training


def test_training_is_deterministic_and_uses_labels():
    generator = torch.Generator().manual_seed(0)
    real, fake = separable_images(16, True, generator), separable_images(16, False, generator)
    labels = torch.arange(16) % 2
    cfg = DiscriminatorConfig(steps=3, batch_size=8, width=8, log_every=1)
    a, history_a = train_discriminator(real, fake, real_labels=labels, fake_labels=labels, label_dim=2, cfg=cfg)
    b, history_b = train_discriminator(real, fake, real_labels=labels, fake_labels=labels, label_dim=2, cfg=cfg)
    assert history_a == history_b
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    logits = discriminator_logits(a, real, labels, sigma=0.01, batch_size=5)
    assert logits.shape == (16,)
    torch.testing.assert_close(logits, a(real.float() / 127.5 - 1, 0.01, labels))
    assert not torch.equal(a(real.float() / 127.5 - 1, 0.01, labels), a(real.float() / 127.5 - 1, 0.01, 1 - labels))


def test_sigma_distributions():
    generator = torch.Generator().manual_seed(0)
    uniform = draw_sigma(generator, 20000, DiscriminatorConfig(sigma_min=0.01, sigma_max=100.0))
    assert uniform.min() >= 0.01 and uniform.max() <= 100.0
    assert uniform.log().mean().item() == pytest.approx(math.log(1.0), abs=0.05)  # midpoint of [ln .01, ln 100]
    lognormal = draw_sigma(generator, 20000, DiscriminatorConfig(sigma_distribution="lognormal"))
    assert lognormal.log().mean().item() == pytest.approx(-1.2, abs=0.03)
    assert lognormal.log().std().item() == pytest.approx(1.2, abs=0.03)


# ----------------------------------------------------------------------------------------------------
# Bad inputs.

def test_bad_inputs_raise(tiny_edm, tiny_discriminator):
    real = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8"):
        train_discriminator(real.float(), real)
    with pytest.raises(ValueError, match="shape"):
        train_discriminator(real, torch.zeros(4, 1, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="labels"):
        train_discriminator(real, real, label_dim=3)
    with pytest.raises(ValueError, match="lie in"):
        train_discriminator(real, real, label_dim=3, real_labels=torch.full((4,), 3), fake_labels=torch.zeros(4))
    with pytest.raises(ValueError, match="sigma_distribution"):
        DiscriminatorConfig(sigma_distribution="uniform")
    with pytest.raises(ValueError, match="label_dim"):
        GuidedDenoiser(tiny_edm, NoisyDiscriminator(channels=1, resolution=8, label_dim=5), 1.0)
    with pytest.raises(ValueError, match="finite"):
        GuidedDenoiser(tiny_edm, tiny_discriminator, float("nan"))
    with pytest.raises(ValueError, match="x must be"):
        tiny_discriminator(torch.zeros(2, 3, 8, 8), 1.0)
    with pytest.raises(ValueError, match="weight 0"):
        measure_guidance_cost(GuidedDenoiser(tiny_edm, tiny_discriminator, 0.0), [0], batch_size=1)
    with pytest.raises(ValueError, match="std"):
        GaussianDenoiser(0.0, 0.0)
