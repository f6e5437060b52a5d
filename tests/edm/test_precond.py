"""EDM preconditioners: closed-form coefficients (Karras et al. 2022, Table 1), label handling, validation, batch independence."""
import types

import numpy as np
import pytest
import torch
from torch import nn

from ddo_lib.edm.precond import (
    EDMPrecond,
    VEPrecond,
    VPPrecond,
    iDDPMPrecond,
    network_from_official,
    plain_value,
)

TINY_SONG = dict(model_type="SongUNet", model_channels=16, channel_mult=[1], num_blocks=1, attn_resolutions=[],
                 dropout=0)
TINY_ADM = dict(model_type="DhariwalUNet", model_channels=16, channel_mult=[1], num_blocks=1, attn_resolutions=[],
                dropout=0)
SIGMAS = np.array([0.002, 0.07, 1.3, 80.0])


class RecordingUNet(nn.Module):
    """Stand-in for F_theta: records its inputs, returns a fixed F_x of `out_channels` channels."""

    def __init__(self, out_channels):
        super().__init__()
        self.out_channels = out_channels
        self.seen = None

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        self.seen = dict(x=x, noise_labels=noise_labels, class_labels=class_labels, augment_labels=augment_labels)
        F_x = torch.linspace(-1, 1, x[:, :1].numel()).reshape(x[:, :1].shape).repeat(1, self.out_channels, 1, 1)
        F_x[:, x.shape[1]:] = 1e3  # iDDPM's second half (variance output) must be ignored
        return F_x.to(x.dtype)


def with_recorder(net, out_channels):
    net.model = RecordingUNet(out_channels)
    return net


def check_coefficients(net, c_skip, c_out, c_in, c_noise, out_channels=2):
    """Compare D_x and the UNet inputs with closed-form float64 coefficient arrays over SIGMAS."""
    torch.manual_seed(0)
    net = with_recorder(net, out_channels)
    x = torch.randn(len(SIGMAS), 2, 8, 8)
    sigma = torch.tensor(SIGMAS, dtype=torch.float32)
    D_x = net(x, sigma)
    seen = net.model.seen
    F_x = RecordingUNet(2)(x, None, None)
    column = lambda a: torch.tensor(a, dtype=torch.float32).reshape(-1, 1, 1, 1)
    assert D_x.dtype == torch.float32
    assert torch.allclose(D_x, column(c_skip) * x + column(c_out) * F_x, rtol=1e-5, atol=1e-5)
    assert torch.allclose(seen["x"], column(c_in) * x, rtol=1e-5, atol=1e-7)
    assert torch.allclose(seen["noise_labels"], torch.tensor(c_noise, dtype=torch.float32), rtol=1e-5, atol=1e-4)


def test_edm_coefficients():
    net = EDMPrecond(8, 2, **TINY_SONG)
    s, sd = SIGMAS, 0.5
    check_coefficients(net, sd**2 / (s**2 + sd**2), s * sd / np.sqrt(s**2 + sd**2), 1 / np.sqrt(s**2 + sd**2),
                       np.log(s) / 4)
    assert (net.sigma_min, net.sigma_max, net.sigma_data) == (0.0, float("inf"), 0.5)
    sigma = torch.tensor([0.123456789], dtype=torch.float64)
    assert torch.equal(net.round_sigma(sigma), sigma)


def test_vp_coefficients_and_range():
    net = VPPrecond(8, 2, **TINY_SONG)
    beta_d, beta_min, M = 19.9, 0.1, 1000
    # c_noise = (M - 1) t(sigma) in float32 as the official code computes it: at sigma = 0.002 the float32
    # rounding of 1 + sigma² moves t by 1.3 % from the float64 value, so the oracle uses float32 too.
    s = SIGMAS.astype(np.float32)
    t_of_sigma = (np.sqrt(beta_min**2 + 2 * beta_d * np.log(1 + s**2)) - beta_min) / beta_d
    assert t_of_sigma.dtype == np.float32
    t_of_sigma_float64 = (np.sqrt(beta_min**2 + 2 * beta_d * np.log1p(SIGMAS**2)) - beta_min) / beta_d
    assert np.allclose(t_of_sigma[1:], t_of_sigma_float64[1:], rtol=1e-5)
    check_coefficients(net, np.ones(4), -SIGMAS, 1 / np.sqrt(SIGMAS**2 + 1), (M - 1) * t_of_sigma)
    sigma_of_t = lambda t: np.sqrt(np.exp(0.5 * beta_d * t**2 + beta_min * t) - 1)
    assert net.sigma_max == pytest.approx(sigma_of_t(1.0), rel=1e-5)
    assert net.sigma_max == pytest.approx(152.17, abs=0.01)
    # sigma_min comes out of float32 arithmetic in the official code: exp(~1e-6) rounded to float32 is
    # 1 + 8 ulps, so sigma_min = sqrt(8 * 2**-23) instead of the float64 value 0.0010000.
    t = np.float32(1e-5)
    exponent = np.float32(0.5 * beta_d) * t * t + np.float32(beta_min) * t
    exp_rounded = np.float32(np.exp(np.float64(exponent)))  # correctly rounded float32 exp
    official_float32 = np.sqrt(exp_rounded - np.float32(1))
    assert float(official_float32) == pytest.approx(np.sqrt(8 * 2.0**-23), rel=1e-6)
    assert net.sigma_min == pytest.approx(float(official_float32), rel=1e-6)
    assert net.sigma_min == pytest.approx(0.000977, abs=5e-7)
    t_grid = torch.tensor([1e-3, 0.1, 0.5, 1.0], dtype=torch.float64)
    assert torch.allclose(net.sigma_inv(net.sigma(t_grid)), t_grid, rtol=1e-10)


def test_ve_coefficients():
    net = VEPrecond(8, 2, **TINY_SONG)
    check_coefficients(net, np.ones(4), SIGMAS, np.ones(4), np.log(SIGMAS / 2))
    assert (net.sigma_min, net.sigma_max) == (0.02, 100.0)


def iddpm_u_float64(M=1000, C_1=0.001, C_2=0.008):
    alpha_bar = lambda j: np.sin(0.5 * np.pi * j / M / (C_2 + 1)) ** 2
    u = np.zeros(M + 1)
    for j in range(M, 0, -1):
        u[j - 1] = np.sqrt((u[j] ** 2 + 1) / max(alpha_bar(j - 1) / alpha_bar(j), C_1) - 1)
    return u


def test_iddpm_u_round_sigma_and_coefficients():
    net = iDDPMPrecond(8, 2, **TINY_ADM)
    u = net.u.double().numpy()
    assert u.shape == (1001,) and u[-1] == 0 and np.all(np.diff(u) < 0)
    # The official recurrence runs in float32; over 1000 steps it drifts up to 4.8e-4 from float64.
    assert np.allclose(u, iddpm_u_float64(), rtol=1e-3, atol=0)
    assert net.sigma_min == pytest.approx(0.00642, abs=5e-6) and net.sigma_min == float(net.u[999])
    assert net.sigma_max == pytest.approx(20291, abs=1) and net.sigma_max == float(net.u[0])
    assert [name for name, _ in net.named_buffers()][0] == "u"

    sigma = torch.tensor([[0.0, 0.5], [3.0, 1e6]], dtype=torch.float64)
    nearest = np.abs(sigma.numpy().reshape(-1, 1) - u.reshape(1, -1)).argmin(axis=1).reshape(2, 2)
    assert torch.equal(net.round_sigma(sigma, return_index=True), torch.tensor(nearest))
    snapped = net.round_sigma(sigma)
    assert snapped.dtype == torch.float64 and snapped.shape == (2, 2)
    assert torch.equal(snapped, net.u.double()[torch.tensor(nearest)])

    index = np.abs(SIGMAS[:, None] - u[None]).argmin(axis=1)
    check_coefficients(net, np.ones(4), -SIGMAS, 1 / np.sqrt(SIGMAS**2 + 1), 999 - index, out_channels=4)


def test_labels_none_integer_and_float():
    net = with_recorder(EDMPrecond(8, 2, label_dim=5, **TINY_SONG), 2)
    x = torch.randn(3, 2, 8, 8)
    net(x, torch.ones(3))
    assert torch.equal(net.model.seen["class_labels"], torch.zeros(1, 5))
    net(x, torch.ones(3), torch.tensor([4, 0, 2]))
    assert torch.equal(net.model.seen["class_labels"], torch.eye(5)[[4, 0, 2]])
    net(x.double(), torch.tensor(2.5, dtype=torch.float64), torch.eye(5, dtype=torch.float64)[[1, 1, 3]])
    assert net.model.seen["class_labels"].dtype == torch.float32
    assert net.model.seen["noise_labels"].shape == (1,)


def test_integer_labels_equal_one_hot_on_official_net(official_fixture):
    fixture = official_fixture("edm_ddpmpp_tiny.pt")
    net = network_from_official("EDMPrecond", fixture["init_kwargs"]).eval()
    net.load_state_dict(fixture["state_dict"])
    case = fixture["cases"][0]
    with torch.no_grad():
        one_hot = net(case["x"], case["sigma"], case["class_labels"])
        indices = net(case["x"], case["sigma"], case["class_labels"].argmax(dim=1))
    assert torch.equal(one_hot, indices)


def expect_error(match, fn, *args, **kwargs):
    with pytest.raises(ValueError, match=match):
        fn(*args, **kwargs)


def test_bad_inputs_name_expected_and_found():
    net = EDMPrecond(8, 2, label_dim=5, **TINY_SONG)
    sigma = torch.ones(3)
    expect_error(r"expected shape \[N, 2, 8, 8\], found \[3, 2, 16, 16\]", net, torch.zeros(3, 2, 16, 16), sigma)
    expect_error(r"expected shape \[N, 2, 8, 8\], found \[3, 3, 8, 8\]", net, torch.zeros(3, 3, 8, 8), sigma)
    expect_error(r"expected shape \[3 or 1, 5\].*found \[3, 10\]", net, torch.zeros(3, 2, 8, 8), sigma,
                 torch.zeros(3, 10))
    expect_error(r"class index 7 out of range.*label_dim=5", net, torch.zeros(3, 2, 8, 8), sigma,
                 torch.tensor([0, 7, 1]))
    expect_error(r"class index -1 out of range", net, torch.zeros(3, 2, 8, 8), sigma, torch.tensor([0, -1, 1]))
    expect_error(r"sigma: expected 1 or N=3 .*found shape \[2\]", net, torch.zeros(3, 2, 8, 8), torch.ones(2))
    unconditional = EDMPrecond(8, 2, **TINY_SONG)
    expect_error(r"unconditional \(label_dim=0\).*found shape \[3, 5\]", unconditional, torch.zeros(3, 2, 8, 8),
                 sigma, torch.zeros(3, 5))


def test_network_from_official_rejects_unknown_names():
    expect_error(r"unknown class_name 'EDMPrecnd'.*'EDMPrecond'.*'Precond'", network_from_official, "EDMPrecnd", {})
    expect_error(r"unknown EDMPrecond arguments \['model_chanels'\].*accepted: .*'model_channels'",
                 network_from_official, "EDMPrecond", dict(img_resolution=8, img_channels=2, model_chanels=16))
    expect_error(r"model_type must be one of \['DhariwalUNet', 'SongUNet'\]; found 'DiT'",
                 network_from_official, "EDMPrecond", dict(img_resolution=8, img_channels=2, model_type="DiT"))
    expect_error(r"unknown DhariwalUNet arguments \['embedding_type'\]", EDMPrecond, 8, 2,
                 **{**TINY_ADM, "embedding_type": "fourier"})


def test_network_from_official_accepts_numpy_values(official_fixture):
    fixture = official_fixture("edm_ddpmpp_tiny.pt")
    kwargs = {k: (np.int64(v) if isinstance(v, int) else tuple(v) if isinstance(v, list) else v)
              for k, v in fixture["init_kwargs"].items()}
    kwargs["dropout"] = np.float64(0.0)
    kwargs["resample_filter"] = np.array([1, 1])
    net = network_from_official("EDMPrecond", kwargs)
    net.load_state_dict(fixture["state_dict"], strict=True)
    assert list(net.state_dict()) == fixture["state_dict_keys"]
    assert plain_value((np.float32(0.5), [np.int64(2)])) == [0.5, [2]]


def test_precond_class_name_dispatches_to_edm2(monkeypatch):
    received = {}

    class FakePrecond(nn.Module):
        def __init__(self, img_resolution, img_channels, label_dim, **kwargs):
            super().__init__()
            received.update(img_resolution=img_resolution, label_dim=label_dim, **kwargs)

    import ddo_lib.edm.precond as precond_module

    monkeypatch.setattr(precond_module, "networks_edm2", types.SimpleNamespace(Precond=FakePrecond))
    net = network_from_official("Precond", dict(img_resolution=np.int64(16), img_channels=3, label_dim=10,
                                                channel_mult=(1, 2)))
    assert isinstance(net, FakePrecond)
    assert received == dict(img_resolution=16, label_dim=10, channel_mult=[1, 2])
    assert type(received["img_resolution"]) is int
    expect_error(r"EDM2 Precond rejected", network_from_official, "Precond", dict(img_resolution=16))


def test_precond_class_name_builds_real_edm2(official_fixture):
    fixture = official_fixture("edm2_tiny.pt")
    net = network_from_official("Precond", fixture["init_kwargs"])
    net.load_state_dict(fixture["state_dict"], strict=True)
    assert list(net.state_dict()) == fixture["state_dict_keys"]
    expect_error(r"unknown Precond arguments \['model_chanels'\]; accepted: .*'model_channels'",
                 network_from_official, "Precond", {**fixture["init_kwargs"], "model_chanels": 8})


@pytest.mark.parametrize("name", ["edm_ddpmpp_tiny.pt", "edm_adm_tiny.pt"])
def test_batch_size_independence(official_fixture, name):
    fixture = official_fixture(name)
    net = network_from_official("EDMPrecond", fixture["init_kwargs"]).eval()
    net.load_state_dict(fixture["state_dict"])
    case = fixture["cases"][0]
    with torch.no_grad():
        batched = net(case["x"], case["sigma"], case["class_labels"], augment_labels=case["augment_labels"])
        rows = [net(case["x"][i:i + 1], case["sigma"][i:i + 1], case["class_labels"][i:i + 1],
                    augment_labels=None if case["augment_labels"] is None else case["augment_labels"][i:i + 1])
                for i in range(len(case["x"]))]
    error = (torch.cat(rows) - batched).abs().max().item()
    assert error <= 1e-5 * batched.abs().max().item()
