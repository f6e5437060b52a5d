"""EDM2 Precond/UNet: state_dict and output equivalence with NVlabs/edm2, MP invariants, validation."""
import math

import pytest
import torch

from ddo_lib.edm.networks_edm2 import (
    MPConv,
    MPFourier,
    Precond,
    mp_cat,
    mp_silu,
    mp_sum,
    normalize,
    resample,
)

FIXTURE = "edm2_tiny.pt"
REL_TOL = 1e-5  # fixtures README §2: max|Δ| ≤ 1e-5 · max|ref|


@pytest.fixture(scope="module")
def fixture(official_fixture):
    return official_fixture(FIXTURE)


@pytest.fixture(scope="module")
def net(fixture):
    net = Precond(**fixture["init_kwargs"]).eval()
    net.load_state_dict(fixture["state_dict"], strict=True)
    return net


def _call(net, case, **kwargs):
    with torch.no_grad():
        return net(case["x"], case["sigma"], case["class_labels"], return_logvar=case["logvar"] is not None,
                   **kwargs)


def _max_rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# ---- state_dict compatibility ------------------------------------------------------------------------


def test_state_dict_keys_order_shapes_and_counts(fixture):
    net = Precond(**fixture["init_kwargs"])
    state = net.state_dict()
    assert list(state) == fixture["state_dict_keys"]
    assert {k: tuple(v.shape) for k, v in state.items()} == fixture["shapes"]
    assert sum(p.numel() for p in net.parameters()) == fixture["num_parameters"] == 723691
    assert sorted(name for name, _ in net.named_buffers()) == sorted(fixture["buffer_keys"])
    assert sorted(name for name, _ in net.named_parameters()) == sorted(fixture["parameter_keys"])


def test_attributes(net):
    assert (net.img_resolution, net.img_channels, net.label_dim) == (16, 3, 10)
    assert net.use_fp16 is False and net.sigma_data == 0.5
    assert net.sigma_min == 0 and net.sigma_max == math.inf
    sigma = torch.tensor([0.3, 2.0])
    assert torch.equal(net.round_sigma(sigma), sigma)


# ---- numerical equivalence with the official code ---------------------------------------------------


@pytest.mark.parametrize("index", [0, 1, 2])
def test_matches_official_outputs(net, fixture, index):
    case = fixture["cases"][index]
    out = _call(net, case)
    D_x, logvar = out if case["logvar"] is not None else (out, None)
    assert D_x.dtype == torch.float32 and D_x.shape == case["D_x"].shape
    assert _max_rel(D_x, case["D_x"]) <= REL_TOL
    if case["logvar"] is not None:
        assert logvar.shape == case["logvar"].shape == (4, 1, 1, 1)
        assert _max_rel(logvar, case["logvar"]) <= REL_TOL


def test_float16_state_dict_runs_float32_compute(fixture):
    """Official EMA nets are fp16 (buffers too): loading them must work and compute stays fp32 on CPU."""
    half_state = {k: v.half() for k, v in fixture["state_dict"].items()}
    rounded_state = {k: v.float() for k, v in half_state.items()}
    reference = Precond(**fixture["init_kwargs"]).eval()
    reference.load_state_dict(rounded_state, strict=True)
    into_fp32 = Precond(**fixture["init_kwargs"]).eval()
    into_fp32.load_state_dict(half_state, strict=True)
    as_fp16 = Precond(**fixture["init_kwargs"]).half().eval()  # like the pickled EMA object
    as_fp16.load_state_dict(half_state, strict=True)
    assert as_fp16.unet.emb_fourier.freqs.dtype == torch.float16
    for case in fixture["cases"][:2]:
        D_ref, logvar_ref = _call(reference, case)
        D_a, logvar_a = _call(into_fp32, case)
        D_b, logvar_b = _call(as_fp16, case)
        assert torch.equal(D_a, D_ref) and torch.equal(logvar_a, logvar_ref)
        assert D_b.dtype == logvar_b.dtype == torch.float32
        # fp16 arithmetic anywhere would show up at ~1e-3; the fp32 path agrees to rounding noise.
        assert _max_rel(D_b, D_ref) <= REL_TOL and _max_rel(logvar_b, logvar_ref) <= REL_TOL
        # Rounding the weights to fp16 moves outputs only a little from the official fp32 outputs.
        assert _max_rel(D_b, case["D_x"]) <= 5e-3 and _max_rel(logvar_b, case["logvar"]) <= 5e-3


# ---- official configurations (NVlabs/edm2 `generate_images.py`, `training/networks_edm2.py`) ----------

# (model_channels, millions of parameters) for img512 (latent 64x64x4), label_dim 1000.
IMG512_SIZES = {"xs": (128, 124.7), "s": (192, 280.2), "m": (256, 497.8),
                "l": (320, 777.5), "xl": (384, 1119.3), "xxl": (448, 1523.2)}


@pytest.mark.parametrize("img_channels,size", [(4, s) for s in IMG512_SIZES] + [(3, s) for s in ("s", "m", "l", "xl")])
def test_official_config_parameter_counts(img_channels, size):
    """img512 counts as published; img64 (pixels, 3 channels) is stated to be identical at 0.1M."""
    model_channels, millions = IMG512_SIZES[size]
    with torch.device("meta"):
        net = Precond(64, img_channels, 1000, model_channels=model_channels)
    assert round(sum(p.numel() for p in net.parameters()) / 1e6, 1) == millions
    assert len(net.state_dict()) == 203


# ---- magnitude-preserving invariants ----------------------------------------------------------------


def _rms(x):
    return x.square().mean().sqrt().item()


@pytest.fixture()
def generator():
    return torch.Generator().manual_seed(0)


def test_mp_operations_preserve_unit_magnitude(generator):
    a = torch.randn(400, 250, 8, 8, generator=generator)  # 800k samples: Monte-Carlo error ~1e-3
    b = torch.randn(400, 150, 8, 8, generator=generator)
    assert abs(_rms(mp_silu(a)) - 1) < 0.01
    for t in (0.3, 0.5, 0.8):
        assert abs(_rms(mp_sum(a, torch.randn(a.shape, generator=generator), t)) - 1) < 0.01
        out = mp_cat(a, b, t=t)
        assert out.shape == (400, 400, 8, 8) and abs(_rms(out) - 1) < 0.01
        # The blend weight t is the share of b's energy, whatever the channel counts.
        share_b = out[:, 250:].square().sum() / out.square().sum()
        assert abs(share_b.item() - t ** 2 / ((1 - t) ** 2 + t ** 2)) < 0.01


def test_normalize_and_fourier_unit_rms(generator):
    x = 7 * torch.randn(5, 3, 4, 4, generator=generator)
    rms_per_sample = normalize(x).square().mean(dim=[1, 2, 3]).sqrt()
    assert torch.allclose(rms_per_sample, torch.ones(5), atol=1e-4)
    rms_per_pixel = normalize(x, dim=1).square().mean(dim=1).sqrt()
    assert torch.allclose(rms_per_pixel, torch.ones(5, 4, 4), atol=1e-4)
    torch.manual_seed(1)
    fourier = MPFourier(4096)
    assert abs(_rms(fourier(torch.randn(64, generator=generator))) - 1) < 0.02


def test_mpconv_unit_rms_output(generator):
    torch.manual_seed(1)  # weights from a stream independent of the inputs' generator
    linear, conv = MPConv(512, 256, []).eval(), MPConv(64, 96, [3, 3]).eval()
    with torch.no_grad():
        linear.weight.mul_(13.0)  # the normalisation makes the stored scale irrelevant
        y = linear(torch.randn(2048, 512, generator=generator))
        assert y.shape == (2048, 256) and abs(_rms(y) - 1) < 0.02
        y = conv(torch.randn(64, 64, 34, 34, generator=generator))[:, :, 1:-1, 1:-1]  # interior: no padding
        assert abs(_rms(y) - 1) < 0.02
        assert abs(_rms(linear(torch.randn(2048, 512, generator=generator), gain=0.5)) - 0.5) < 0.01


def test_resample_average_and_nearest():
    x = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(1, 2, 1, 1)
    down = resample(x, mode="down")
    assert torch.equal(down, torch.nn.functional.avg_pool2d(x, 2))
    assert torch.equal(resample(down, mode="up"), down.repeat_interleave(2, 2).repeat_interleave(2, 3))
    assert resample(x, mode="keep") is x
    with pytest.raises(ValueError, match="'sideways'"):
        resample(x, mode="sideways")


# ---- train-mode forced weight normalisation ---------------------------------------------------------


def test_train_mode_normalises_stored_weights(fixture):
    net = Precond(**fixture["init_kwargs"]).eval()
    net.load_state_dict(fixture["state_dict"], strict=True)
    case = fixture["cases"][0]
    convs = [m for m in net.modules() if isinstance(m, MPConv)]
    rms_before = torch.cat([m.weight.flatten(1).square().mean(1).sqrt() for m in convs])
    assert (rms_before - 1).abs().max() > 1e-3  # perturbed official weights are not unit RMS
    D_before, logvar_before = _call(net, case)

    net.train()
    with torch.no_grad():
        D_train, _ = net(case["x"], case["sigma"], case["class_labels"], return_logvar=True)
    net.eval()
    rms_after = torch.cat([m.weight.flatten(1).square().mean(1).sqrt() for m in convs])
    assert (rms_after - 1).abs().max() < 2e-4  # eps = 1e-4 in normalize
    # Eval outputs depend on the weights only through normalize(W): unchanged up to the eps term.
    D_after, logvar_after = _call(net, case)
    assert _max_rel(D_after, D_before) <= 1e-4 and _max_rel(logvar_after, logvar_before) <= 1e-4
    assert _max_rel(D_train, D_before) <= 1e-4  # dropout is 0: train mode computes the same function


# ---- batch-size independence and label forms --------------------------------------------------------


def test_batch_size_independence(net, fixture):
    case = fixture["cases"][0]
    D_x, logvar = _call(net, case)
    for i in range(4):
        single = dict(case, x=case["x"][i:i + 1], sigma=case["sigma"][i:i + 1],
                      class_labels=case["class_labels"][i:i + 1])
        D_i, logvar_i = _call(net, single)
        assert _max_rel(D_i, D_x[i:i + 1]) <= REL_TOL and _max_rel(logvar_i, logvar[i:i + 1]) <= REL_TOL


def test_integer_labels_equal_one_hot(net, fixture):
    case = fixture["cases"][0]
    indices = case["class_labels"].argmax(dim=1)
    assert indices.tolist() == [3, 0, 9, 5]
    D_one_hot, _ = _call(net, case)
    D_index, _ = _call(net, dict(case, class_labels=indices))
    assert torch.equal(D_index, D_one_hot)


def test_python_float_sigma(net, fixture):
    case = fixture["cases"][2]
    with torch.no_grad():
        assert torch.equal(net(case["x"], 2.5, case["class_labels"]), net(case["x"], case["sigma"], case["class_labels"]))


# ---- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize("x,sigma,labels,error,match", [
    (torch.zeros(2, 4, 16, 16), 1.0, None, ValueError, r"\[N, 3, 16, 16\]"),
    (torch.zeros(2, 3, 8, 8), 1.0, None, ValueError, r"found \[2, 3, 8, 8\]"),
    (torch.zeros(3, 16, 16), 1.0, None, ValueError, "shape"),
    (torch.zeros(2, 3, 16, 16, dtype=torch.int64), 1.0, None, TypeError, "floating-point"),
    (torch.zeros(2, 3, 16, 16), torch.ones(3), None, ValueError, "2 entries"),
    (torch.zeros(2, 3, 16, 16), torch.tensor([1.0, 0.0]), None, ValueError, "positive"),
    (torch.zeros(2, 3, 16, 16), 1.0, torch.zeros(2, 9), ValueError, r"\[2 or 1, 10\]"),
    (torch.zeros(2, 3, 16, 16), 1.0, torch.zeros(3, 10), ValueError, r"found \[3, 10\]"),
    (torch.zeros(2, 3, 16, 16), 1.0, torch.tensor([1, 10]), ValueError, "class index 10 out of range"),
    (torch.zeros(2, 3, 16, 16), 1.0, torch.tensor([-1, 2]), ValueError, "class index -1"),
    (torch.zeros(2, 3, 16, 16), 1.0, torch.tensor([1, 2, 3]), ValueError, r"shape \[2\]"),
    (torch.zeros(2, 3, 16, 16), 1.0, torch.tensor([True, False]), TypeError, "class_labels"),
])
def test_bad_input_errors(net, x, sigma, labels, error, match):
    with pytest.raises(error, match=match):
        net(x, sigma, labels)


def test_labels_to_unconditional_net_rejected():
    torch.manual_seed(0)
    net = Precond(8, 1, 0, model_channels=8, channel_mult=[1], num_blocks=1, attn_resolutions=[]).eval()
    x = torch.zeros(2, 1, 8, 8)
    with torch.no_grad():
        assert net(x, 1.0).shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="unconditional"):
        net(x, 1.0, torch.tensor([0, 1]))


def test_unknown_unet_option_rejected():
    with pytest.raises(TypeError, match="widht"):
        Precond(8, 1, 0, widht=3)


def test_cfg_guidance_with_an_unconditional_guide_network():
    """EDM2 CFG: the conditional net is guided by an unconditional one (label_dim 0) given no labels."""
    from ddo_lib.edm.sampler import edm2_sampler

    torch.manual_seed(0)
    kwargs = dict(use_fp16=False, model_channels=32, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8])
    net = Precond(16, 3, 10, **kwargs).eval()
    gnet = Precond(16, 3, 0, **kwargs).eval()
    with torch.no_grad():  # the zero-initialised gains would make both nets output c_skip·x
        for p in [*net.parameters(), *gnet.parameters()]:
            p.add_(0.3 * torch.randn(p.shape))
    noise = torch.randn(2, 3, 16, 16)
    labels = torch.eye(10)[:2]
    guided = edm2_sampler(net, noise, labels, gnet=gnet, guidance=1.5, num_steps=3)
    plain = edm2_sampler(net, noise, labels, num_steps=3)
    assert torch.isfinite(guided).all() and not torch.allclose(guided, plain)
