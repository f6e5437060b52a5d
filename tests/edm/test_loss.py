"""EDM loss and per-sample weighted denoising error: closed forms, the F-space identity, batch independence."""
import math

import pytest
import torch

from ddo_lib.edm.loss import denoising_error, edm_loss, edm_weight, sample_sigma
from ddo_lib.edm.precond import network_from_official
from ddo_lib.toys.gaussian import GaussianDenoiser

SIGMAS = [0.05, 0.3, 1.0, 4.0, 20.0]


@pytest.fixture(scope="module")
def net(official_fixture):
    d = official_fixture("edm_ddpmpp_tiny.pt")
    model = network_from_official(d["class_name"], d["init_kwargs"])
    model.load_state_dict(d["state_dict"], strict=True)
    return model.eval()


def batch(num: int, seed: int = 0):
    """x in (-1, 1), sigma [num], noise, one-hot labels, augment labels; all from one private generator."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(num, 3, 16, 16, generator=generator) * 2 - 1
    sigma = sample_sigma(torch.randn(num, generator=generator))
    noise = torch.randn(num, 3, 16, 16, generator=generator)
    labels = torch.eye(10)[torch.randint(10, [num], generator=generator)]
    augment_labels = torch.randn(num, 9, generator=generator)
    return x, sigma, noise, labels, augment_labels


def test_sample_sigma_is_log_normal():
    z = torch.tensor([-1.0, 0.0, 2.0])
    torch.testing.assert_close(sample_sigma(z), torch.exp(-1.2 + 1.2 * z))
    torch.testing.assert_close(sample_sigma(z, P_mean=-0.4, P_std=1.0), torch.exp(-0.4 + z))
    with pytest.raises(ValueError, match=r"\[B\]"):
        sample_sigma(torch.zeros(2, 1))


def test_edm_weight_closed_form():
    sigma = torch.tensor([0.5, 1.0, 0.002], dtype=torch.float64)
    # At sigma = sigma_data: 2·sigma_d^2 / sigma_d^4 = 2/sigma_d^2 = 8.
    expected = torch.tensor([8.0, (1 + 0.25) / 0.25, (0.002 ** 2 + 0.25) / (0.002 ** 2 * 0.25)], dtype=torch.float64)
    torch.testing.assert_close(edm_weight(sigma, 0.5), expected, rtol=1e-15, atol=0)


def test_weighted_error_equals_F_space_error(net):
    """lambda·||D - x||^2 = ||F - F_target||^2 with F_target = (x - c_skip·(x + n))/c_out (lambda·c_out^2 = 1)."""
    x, _, noise, labels, augment_labels = batch(len(SIGMAS))
    sigma = torch.tensor(SIGMAS)
    error = denoising_error(net, x, sigma, noise, labels, augment_labels)

    sigma_data, s = 0.5, sigma.reshape(-1, 1, 1, 1)
    c_skip = sigma_data ** 2 / (s ** 2 + sigma_data ** 2)
    c_out = s * sigma_data / (s ** 2 + sigma_data ** 2).sqrt()
    c_in = 1 / (s ** 2 + sigma_data ** 2).sqrt()
    x_noisy = x + s * noise
    with torch.no_grad():
        F_x = net.model(c_in * x_noisy, (s.log() / 4).flatten(), labels, augment_labels=augment_labels)
    F_target = (x - c_skip * x_noisy) / c_out
    expected = ((F_x - F_target) ** 2).sum(dim=(1, 2, 3))
    relative = ((error - expected).abs() / expected).max().item()
    assert relative <= 1e-6, f"relative difference {relative:.3g}"  # measured 1.3e-7 (float32 D - x)


@pytest.mark.parametrize("mu, s", [(0.2, 0.5), (-0.3, 0.8), (0.0, 0.1)])
def test_perfect_denoiser_expected_loss(mu, s):
    """E[lambda·(D - x)^2] per pixel = lambda(sigma)·s^2·sigma^2/(s^2 + sigma^2) for the exact denoiser (= 1 at s = sigma_d)."""
    generator = torch.Generator().manual_seed(1)
    num, pixels = 64, 3 * 16 * 16
    for sigma_value in SIGMAS:
        x = mu + s * torch.randn(num, 3, 16, 16, generator=generator, dtype=torch.float64)
        noise = torch.randn(num, 3, 16, 16, generator=generator, dtype=torch.float64)
        sigma = torch.full([num], sigma_value, dtype=torch.float64)
        error = denoising_error(GaussianDenoiser(mu, s), x, sigma, noise, sigma_data=0.5)  # [num]
        expected = edm_weight(torch.tensor(sigma_value), 0.5).item() * s ** 2 * sigma_value ** 2 / (s ** 2 + sigma_value ** 2)
        per_pixel = error.mean().item() / pixels
        standard_error = expected * math.sqrt(2 / (num * pixels))  # each pixel term is expected·chi^2_1
        assert abs(per_pixel - expected) <= 4 * standard_error, (sigma_value, per_pixel, expected)


def test_perfect_denoiser_at_sigma_data_costs_one_per_pixel():
    sigma = torch.tensor(SIGMAS, dtype=torch.float64)
    expected = edm_weight(sigma, 0.5) * 0.25 * sigma ** 2 / (0.25 + sigma ** 2)
    torch.testing.assert_close(expected, torch.ones_like(sigma), rtol=1e-14, atol=0)


def test_loss_independent_of_batch_composition(net):
    x, sigma, noise, labels, augment_labels = batch(6, seed=2)
    full = edm_loss(net, x, labels, sigma, noise, augment_labels)
    rows = torch.cat([edm_loss(net, x[i:i + 1], labels[i:i + 1], sigma[i:i + 1], noise[i:i + 1],
                               augment_labels[i:i + 1]) for i in range(6)])
    shuffled = torch.tensor([5, 0, 3, 1, 4, 2])
    permuted = edm_loss(net, x[shuffled], labels[shuffled], sigma[shuffled], noise[shuffled], augment_labels[shuffled])
    assert full.shape == (6,)
    for other in (rows, permuted[shuffled.argsort()]):
        relative = ((other - full).abs() / full).max().item()
        assert relative <= 1e-6, f"relative difference {relative:.3g}"


def test_edm_loss_equals_denoising_error_and_uses_inputs(net):
    x, sigma, noise, labels, augment_labels = batch(3, seed=3)
    loss = edm_loss(net, x, labels, sigma, noise, augment_labels)
    assert torch.equal(loss, denoising_error(net, x, sigma, noise, labels, augment_labels))
    assert not torch.allclose(loss, edm_loss(net, x, labels, sigma, noise))  # augment labels reach the net
    assert not torch.allclose(loss, edm_loss(net, x, labels.roll(1, 0), sigma, noise, augment_labels))
    assert (loss > 0).all()


def test_edm_loss_backpropagates(net):
    x, sigma, noise, labels, _ = batch(2, seed=4)
    trainable = network_from_official("EDMPrecond", {"img_resolution": 16, "img_channels": 3, "label_dim": 10,
                                                     "model_type": "SongUNet", "model_channels": 16,
                                                     "channel_mult": [1, 2], "num_blocks": 1,
                                                     "attn_resolutions": [8], "dropout": 0.0})
    edm_loss(trainable, x, labels, sigma, noise).mean().backward()
    grads = [p.grad for p in trainable.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_denoising_error_rejects_bad_shapes(net):
    x, sigma, noise, labels, _ = batch(2)
    with pytest.raises(ValueError, match="sigma"):
        denoising_error(net, x, sigma[:, None], noise, labels)
    with pytest.raises(ValueError, match="noise"):
        denoising_error(net, x, sigma, noise[:, :1], labels)
    with pytest.raises(ValueError, match="labels"):
        denoising_error(net, x, sigma, noise, labels[:1])
    with pytest.raises(ValueError, match="x must be"):
        denoising_error(net, x[0], sigma, noise, labels)
