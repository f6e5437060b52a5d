"""Tiny digits VAR reference: config validation, smoke pretraining, save/load round trip, bad files."""
import dataclasses
import math

import pytest
import torch

from ddo_lib import data as data_lib
from ddo_lib.checkpoint import save_checkpoint
from ddo_lib.config import ConfigError, from_dict
from ddo_lib.var import reference as var_reference
from ddo_lib.var.family import VARFamily
from ddo_lib.var.reference import SmallVQVAE, VARReference, VARReferenceConfig
from ddo_lib.var.vqvae import image_to_tokens


@pytest.fixture(scope="module")
def dataset():
    images, labels = data_lib.load_digits_dataset(8)
    return data_lib.make_dataset(images[:96], labels[:96], name="digits-96")


@pytest.fixture(scope="module")
def built(dataset) -> VARReference:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return var_reference.build(VARReferenceConfig().smoke(), dataset, progress=False)
    finally:
        torch.set_num_threads(threads)


def test_config_is_validated_like_params_yaml_sections():
    cfg = from_dict(VARReferenceConfig, dict(patch_nums=[1, 2, 4], vocab_size=64, lr=2e-3))
    assert cfg.patch_nums == (1, 2, 4) and cfg.vocab_size == 64
    with pytest.raises(ConfigError, match="unknown keys"):
        from_dict(VARReferenceConfig, dict(depth=2, dropout_rate=0.1))
    with pytest.raises(ConfigError, match="expected int"):
        from_dict(VARReferenceConfig, dict(depth=2.5))


def test_smoke_build_returns_a_frozen_conditional_reference_with_its_tokenizer(built, dataset):
    cfg = VARReferenceConfig().smoke()
    assert built.class_name == "VAR" and isinstance(built.tokenizer, SmallVQVAE)
    assert not built.net.training and not any(p.requires_grad for p in built.net.parameters())
    assert not any(p.requires_grad for p in built.tokenizer.parameters())
    assert built.init_kwargs["drop_rate"] == 0.0 and built.init_kwargs["num_classes"] == 10
    assert all(isinstance(v, (int, float, str)) for v in built.meta.values())
    assert [row["step"] for row in built.history][-1] == cfg.steps
    nll = var_reference.negative_log_likelihood(built, dataset)
    uniform = built.net.L * math.log(cfg.vocab_size)            # log-likelihood of the uniform model
    assert math.isfinite(nll["nll_nats_per_image"]) and nll["nll_nats_per_image"] < uniform
    torch.testing.assert_close(nll["nll_bits_per_token"] * math.log(2) * built.net.L, nll["nll_nats_per_image"])


def test_tokenizer_training_lowers_the_reconstruction_error(dataset):
    cfg = dataclasses.replace(VARReferenceConfig().smoke(), tokenizer_steps=30, log_every=10)
    torch.manual_seed(0)
    tokenizer = SmallVQVAE(**var_reference.tokenizer_kwargs(cfg, channels=1))
    history = var_reference.train_tokenizer(tokenizer, dataset.images, cfg, progress=False)
    assert [row["step"] for row in history] == [10, 20, 30]
    assert history[-1]["mse"] < 0.7 * history[0]["mse"]


def test_dead_codes_are_reseeded_from_latents():
    quantize = SmallVQVAE(vocab_size=8, z_channels=4, patch_nums=(1, 2, 4)).quantize
    quantize.record_hit = 100
    quantize.ema_vocab_hit_SV.fill_(1.0)
    quantize.ema_vocab_hit_SV[:, [2, 5]] = 0.0
    f = torch.randn(3, 4, 4, 4)
    before = quantize.embedding.weight.clone()
    count = var_reference._reset_dead_codes(quantize, f, torch.Generator().manual_seed(0))
    latents = f.permute(0, 2, 3, 1).reshape(-1, 4)
    assert count == 2 and torch.equal(quantize.embedding.weight[[0, 1, 3, 4, 6, 7]], before[[0, 1, 3, 4, 6, 7]])
    for code in (2, 5):
        assert (latents == quantize.embedding.weight[code]).all(dim=1).any()


def test_cosine_schedule_warms_up_then_decays_to_the_floor():
    lrs = [var_reference.cosine_lr(1.0, step, 110, 10) for step in range(111)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0) and lrs[10] == pytest.approx(1.0)
    assert lrs[110] == pytest.approx(0.1) and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_save_load_round_trip_is_exact(built, dataset, tmp_path):
    path = var_reference.save(tmp_path / "var" / "reference.pt", built)
    loaded = var_reference.load(path)
    for mine, theirs in ((built.net, loaded.net), (built.tokenizer, loaded.tokenizer)):
        assert mine.state_dict().keys() == theirs.state_dict().keys()
        assert all(torch.equal(v, theirs.state_dict()[k]) for k, v in mine.state_dict().items())
    assert loaded.init_kwargs == var_reference.plain(built.init_kwargs) and loaded.meta == built.meta
    x = data_lib.to_float(dataset.images[:5])
    tokens, reloaded = image_to_tokens(built.tokenizer, x), image_to_tokens(loaded.tokenizer, x)
    assert all(torch.equal(a, b) for a, b in zip(tokens, reloaded))
    family = var_reference.family(loaded, cfg=0.0)
    assert isinstance(family, VARFamily) and family.cfg == 0.0
    seeds, labels = [0, 1, 2], torch.tensor([4, 5, 6])
    assert torch.equal(family.sample(loaded.net, seeds, labels), var_reference.family(built, cfg=0.0).sample(
        built.net, seeds, labels))


def test_wrong_files_are_refused(built, tmp_path):
    path = tmp_path / "reference.pt"
    var_reference.save(path, built)
    payload = torch.load(path, weights_only=True)
    save_checkpoint(tmp_path / "edm.pt", dict(payload, format="ddo_lib.network/1"))
    with pytest.raises(ValueError, match="ddo_lib VAR reference"):
        var_reference.load(tmp_path / "edm.pt")
    save_checkpoint(tmp_path / "extra.pt", dict(payload, optimizer={}))
    with pytest.raises(ValueError, match="expected keys"):
        var_reference.load(tmp_path / "extra.pt")
    state = dict(payload["state_dict"])
    state.pop("head.bias")
    save_checkpoint(tmp_path / "missing.pt", dict(payload, state_dict=state))
    with pytest.raises(ValueError, match="missing \\['head.bias'\\]"):
        var_reference.load(tmp_path / "missing.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not read"):
        var_reference.load(tmp_path / "garbage.pt")


def test_build_refuses_data_it_cannot_model(dataset):
    cfg = VARReferenceConfig().smoke()
    unlabelled = data_lib.make_dataset(dataset.images, None, name="unlabelled")
    with pytest.raises(ValueError, match="unlabelled"):
        var_reference.build(cfg, unlabelled, progress=False)
    with pytest.raises(ValueError, match="8-px images cannot reach the last token map of 3x3"):
        var_reference.build(dataclasses.replace(cfg, patch_nums=(1, 2, 3)), dataset, progress=False)


@pytest.mark.parametrize("resolution, expected", [(8, (1, 2)), (16, (1, 2, 2)), (32, (1, 2, 2, 2)), (4, (1,))])
def test_tokenizer_levels_follow_the_resolution(resolution, expected):
    assert var_reference.follow_resolution((1, 2), (1, 2, 3, 4), resolution) == expected
    cfg = VARReferenceConfig()
    tokenizer = SmallVQVAE(**var_reference.tokenizer_kwargs(cfg, channels=1, resolution=resolution))
    assert tokenizer.image_size == resolution


@pytest.mark.parametrize("resolution", [6, 12, 2])
def test_sizes_that_do_not_halve_to_the_last_token_map_are_named(resolution):
    with pytest.raises(ValueError, match=f"{resolution}-px"):
        var_reference.follow_resolution((1, 2), (1, 2, 3, 4), resolution)
