"""EDM networks: official-fixture equivalence, official parameter counts, primitive closed forms."""
import math

import pytest
import torch
import torch.nn.functional as F

from ddo_lib.edm.layers import (
    Conv2d,
    FourierEmbedding,
    GroupNorm,
    PositionalEmbedding,
    UNetBlock,
)
from ddo_lib.edm.networks import DhariwalUNet, SongUNet
from ddo_lib.edm.precond import network_from_official

FIXTURES = ["edm_ddpmpp_tiny.pt", "edm_adm_tiny.pt"]


def call_as_recorded(net, case):
    """Call `net` exactly as the fixture case's `call` field says."""
    call = case["call"]
    if call.startswith("net(x, sigma, class_labels, augment_labels=augment_labels)"):
        return net(case["x"], case["sigma"], case["class_labels"], augment_labels=case["augment_labels"])
    if call.startswith("net(x, sigma, None)"):
        assert case["class_labels"] is None and case["augment_labels"] is None
        return net(case["x"], case["sigma"], None)
    if call.startswith("net(x, sigma, class_labels)"):
        assert case["augment_labels"] is None
        return net(case["x"], case["sigma"], case["class_labels"])
    raise AssertionError(f"unrecognised call convention {call!r}")


@pytest.fixture(scope="module", params=FIXTURES)
def loaded(request, official_fixture):
    fixture = official_fixture(request.param)
    net = network_from_official(fixture["class_name"], fixture["init_kwargs"]).eval()
    net.load_state_dict(fixture["state_dict"], strict=True)
    return fixture, net


def test_state_dict_keys_order_shapes_and_counts(loaded):
    fixture, net = loaded
    state = net.state_dict()
    assert list(state) == fixture["state_dict_keys"]
    assert {key: tuple(value.shape) for key, value in state.items()} == \
        {key: tuple(shape) for key, shape in fixture["shapes"].items()}
    assert sum(p.numel() for p in net.parameters()) == fixture["num_parameters"]
    assert sorted(name for name, _ in net.named_buffers()) == sorted(fixture["buffer_keys"])
    assert len(state) == fixture["num_state_dict_entries"]


def test_precond_attributes_match(loaded):
    fixture, net = loaded
    for name, value in fixture["precond_attributes"].items():
        assert getattr(net, name) == value, name


def test_D_x_matches_official(loaded):
    fixture, net = loaded
    assert len(fixture["cases"]) == 3
    for case in fixture["cases"]:
        with torch.no_grad():
            D_x = call_as_recorded(net, case)
        reference = case["D_x"]
        assert D_x.dtype == torch.float32 and D_x.shape == reference.shape, case["name"]
        error = (D_x - reference).abs().max().item()
        assert error <= 1e-5 * reference.abs().max().item(), (case["name"], error)


# Official configurations (NVlabs/edm `train.py`): (class, kwargs, parameters in millions to 2 decimals, state_dict keys).
SONG = dict(model_type="SongUNet", augment_dim=9, model_channels=128, channel_mult=[2, 2, 2], num_blocks=4,
            attn_resolutions=[16], dropout=0.13)
DDPMPP = dict(embedding_type="positional", encoder_type="standard", decoder_type="standard",
              channel_mult_noise=1, resample_filter=[1, 1])
NCSNPP = dict(embedding_type="fourier", encoder_type="residual", decoder_type="standard",
              channel_mult_noise=2, resample_filter=[1, 3, 3, 1])
SONG64 = {**SONG, "channel_mult": [1, 2, 2, 2], "dropout": 0.05}
ADM = dict(model_type="DhariwalUNet", model_channels=192, channel_mult=[1, 2, 3, 4], num_blocks=3,
           attn_resolutions=[32, 16, 8], dropout=0.10)
CIFAR = dict(img_resolution=32, img_channels=3)
FFHQ = dict(img_resolution=64, img_channels=3, label_dim=0)
OFFICIAL_CONFIGS = {
    "cifar10-cond-vp": ("EDMPrecond", dict(**CIFAR, label_dim=10, **SONG, **DDPMPP), 55.74, 427),
    "cifar10-uncond-vp": ("EDMPrecond", dict(**CIFAR, label_dim=0, **SONG, **DDPMPP), 55.73, 425),
    "cifar10-cond-ve": ("EDMPrecond", dict(**CIFAR, label_dim=10, **SONG, **NCSNPP), 56.40, 434),
    "ffhq-uncond-vp": ("EDMPrecond", dict(**FFHQ, **SONG64, **DDPMPP), 61.81, 553),
    "ffhq-uncond-ve": ("EDMPrecond", dict(**FFHQ, **SONG64, **NCSNPP), 62.76, 563),
    "imagenet-cond-adm": ("EDMPrecond", dict(img_resolution=64, img_channels=3, label_dim=1000, use_fp16=True,
                                             **ADM), 295.90, 553),
}


def build_on_meta(class_name, kwargs):
    with torch.device("meta"):
        return network_from_official(class_name, kwargs)


def meta_shapes(name):
    class_name, kwargs, _, _ = OFFICIAL_CONFIGS[name]
    return {key: tuple(value.shape) for key, value in build_on_meta(class_name, kwargs).state_dict().items()}


@pytest.mark.parametrize("name", sorted(OFFICIAL_CONFIGS))
def test_official_configuration_counts(name):
    class_name, kwargs, millions, num_keys = OFFICIAL_CONFIGS[name]
    net = build_on_meta(class_name, kwargs)
    num_parameters = sum(p.numel() for p in net.parameters())
    assert round(num_parameters / 1e6, 2) == millions
    assert len(net.state_dict()) == num_keys


def test_official_key_names_and_shapes():
    """Example official keys (NVlabs/edm `training/networks.py`) for cifar10-cond-vp, NCSN++ and ADM."""
    shapes = meta_shapes("cifar10-cond-vp")
    assert shapes["model.map_label.weight"] == (128, 10)
    assert shapes["model.map_augment.weight"] == (128, 9)
    assert shapes["model.map_layer0.weight"] == (512, 128)
    assert shapes["model.enc.32x32_conv.weight"] == (128, 3, 3, 3)
    assert shapes["model.enc.32x32_block0.skip.weight"] == (256, 128, 1, 1)
    assert shapes["model.enc.16x16_down.conv0.resample_filter"] == (1, 1, 2, 2)
    assert shapes["model.enc.16x16_down.skip.weight"] == (256, 256, 1, 1)
    assert shapes["model.dec.32x32_aux_conv.weight"] == (3, 256, 3, 3)
    attention = sorted({k.rsplit(".", 2)[0] for k in shapes if ".qkv." in k})
    assert attention == ["model.dec.16x16_block4", "model.dec.8x8_in0"] + \
        [f"model.enc.16x16_block{i}" for i in range(4)]

    ncsnpp = meta_shapes("cifar10-cond-ve")
    assert ncsnpp["model.map_noise.freqs"] == (128,)
    assert ncsnpp["model.enc.16x16_aux_residual.weight"] == (256, 3, 3, 3)
    assert ncsnpp["model.enc.16x16_aux_residual.resample_filter"] == (1, 1, 4, 4)

    adm = meta_shapes("imagenet-cond-adm")
    assert adm["model.enc.16x16_down.skip.resample_filter"] == (1, 1, 2, 2)
    assert "model.enc.16x16_down.skip.weight" not in adm
    assert adm["model.map_label.weight"] == (768, 1000)
    assert "model.map_label.bias" not in adm
    assert adm["model.enc.32x32_block0.affine.weight"] == (2 * 384, 768)  # 2C, C = 192·2
    assert adm["model.enc.16x16_block0.affine.weight"] == (2 * 576, 768)  # C = 192·3


def test_baseline_configurations_counts():
    """NVlabs/edm `train.py` baselines (counts inferred): VP + SongUNet defaults, iDDPM + ADM with 6 outputs."""
    vp = build_on_meta("VPPrecond", dict(img_resolution=32, img_channels=3, label_dim=0))
    assert round(sum(p.numel() for p in vp.parameters()) / 1e6, 2) == 61.80 and len(vp.state_dict()) == 552
    iddpm = build_on_meta("iDDPMPrecond", dict(img_resolution=64, img_channels=3, label_dim=1000, **{
        k: v for k, v in ADM.items() if k != "dropout"}))
    assert round(sum(p.numel() for p in iddpm.parameters()) / 1e6, 2) == 295.90 and len(iddpm.state_dict()) == 554
    assert tuple(iddpm.state_dict()["model.out_conv.weight"].shape) == (6, 192, 3, 3)


# Primitives against closed forms.
def test_conv_resample_only_layers_are_pool_and_nearest():
    x = torch.randn(2, 5, 8, 8)
    down = Conv2d(5, 5, 0, down=True)
    up = Conv2d(5, 5, 0, up=True)
    assert [name for name, _ in down.named_parameters()] == []
    assert torch.allclose(down(x), F.avg_pool2d(x, 2), atol=1e-6)
    assert torch.allclose(up(x), x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3), atol=1e-6)
    assert Conv2d(5, 5, 3).resample_filter is None and "resample_filter" not in Conv2d(5, 5, 3).state_dict()
    assert torch.allclose(down.resample_filter, torch.full([1, 1, 2, 2], 0.25))


def test_conv_fused_down_is_conv_then_filter():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    conv = Conv2d(3, 4, 3, down=True, fused_resample=True, resample_filter=[1, 3, 3, 1])
    taps = torch.tensor([1.0, 3, 3, 1]) / 8
    f = torch.outer(taps, taps)[None, None].repeat(4, 1, 1, 1)
    expected = F.conv2d(F.conv2d(x, conv.weight, padding=2), f, groups=4, stride=2) + conv.bias[:, None, None]
    assert conv(x).shape == (2, 4, 4, 4)
    assert torch.allclose(conv(x), expected, atol=1e-5)


def test_group_norm_group_count():
    assert GroupNorm(128).num_groups == 32
    assert GroupNorm(64).num_groups == 16
    assert GroupNorm(12).num_groups == 3


def test_embeddings_closed_form():
    sigma = torch.tensor([0.3, -1.2])
    out = PositionalEmbedding(8, endpoint=True)(sigma)
    freqs = torch.tensor([1e-4 ** (j / 3) for j in range(4)])
    assert torch.allclose(out, torch.cat([torch.cos(sigma[:, None] * freqs), torch.sin(sigma[:, None] * freqs)], 1))
    fourier = FourierEmbedding(8)
    assert [name for name, _ in fourier.named_buffers()] == ["freqs"] and fourier.freqs.shape == (4,)
    angles = 2 * math.pi * sigma[:, None] * fourier.freqs
    assert torch.allclose(fourier(sigma), torch.cat([angles.cos(), angles.sin()], 1), atol=1e-5)


def test_unet_block_children_order_and_weightless_skip():
    block = UNetBlock(32, 32, 64, down=True, attention=True, num_heads=1)
    assert [name for name, _ in block.named_children()] == \
        ["norm0", "conv0", "affine", "norm1", "conv1", "skip", "norm2", "qkv", "proj"]
    assert [k for k in block.state_dict() if k.startswith("skip.")] == ["skip.resample_filter"]
    assert UNetBlock(32, 32, 64, attention=True).num_heads == 0  # ADM: fewer than 64 channels -> no heads


def test_unets_reject_unknown_choices_and_keep_dtype():
    with pytest.raises(ValueError, match="encoder_type.*'bogus'"):
        SongUNet(img_resolution=8, in_channels=1, out_channels=1, encoder_type="bogus")
    net = DhariwalUNet(img_resolution=8, in_channels=1, out_channels=2, model_channels=16, channel_mult=[1, 2],
                       num_blocks=1, attn_resolutions=[]).double()
    out = net(torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.zeros(2, dtype=torch.float64), None)
    assert out.shape == (2, 2, 8, 8) and out.dtype == torch.float64
