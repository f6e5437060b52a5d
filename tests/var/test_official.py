"""Official VAR checkpoints by path (ddo_lib.var.official, reference.load_official): the released file format,
sizes read from the tensors, the fixtures' numbers reproduced, and bad files refused with their names."""
import argparse
import pickle

import pytest
import torch
from official_var import fixture, write_official_var_pair

from ddo_lib.var import official
from ddo_lib.var import reference as var_reference
from ddo_lib.var.likelihood import log_likelihood_from_tokens
from ddo_lib.var.transformer import VAR, official_var_kwargs
from ddo_lib.var.vqvae import image_to_tokens, tokens_to_teacher_forcing_input


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return write_official_var_pair(tmp_path_factory.mktemp("official"))


def config(pair, **extra):
    return var_reference.VARReferenceConfig(checkpoint=str(pair[0]), vqvae=str(pair[1]), **extra)


def test_the_released_pair_reproduces_the_official_tokens_and_log_likelihoods(pair):
    ref = var_reference.load_official(config(pair), label_dim=10, resolution=64)
    case = fixture("var_tiny.pt")["teacher_forcing"]
    maps = image_to_tokens(ref.tokenizer, case["images_uint8"].float() / 127.5 - 1)
    assert all(torch.equal(ours, theirs) for ours, theirs in zip(maps, case["idx_Bl"]))
    logp = log_likelihood_from_tokens(ref.net, case["label_B"], torch.cat(maps, dim=1),
                                      tokens_to_teacher_forcing_input(ref.tokenizer, maps))
    torch.testing.assert_close(logp, case["logp_sum"], rtol=1e-5, atol=1e-4)
    assert ref.tokenizer_class == "VQVAE" and ref.meta["source"] == "official" and ref.meta["depth"] == 2
    assert ref.init_kwargs["cond_drop_rate"] == 0.0 and ref.init_kwargs["drop_path_rate"] == 0.0   # DDO: off


def test_a_saved_official_reference_rebuilds_its_tokenizer_class(pair, tmp_path):
    ref = var_reference.load_official(config(pair))
    back = var_reference.load(var_reference.save(tmp_path / "ref.pt", ref))
    assert type(back.tokenizer).__name__ == "VQVAE" and back.tokenizer_class == "VQVAE"
    for ours, theirs in [(ref.net, back.net), (ref.tokenizer, back.tokenizer)]:
        assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))


def test_version_1_files_still_load_with_the_small_tokenizer(tmp_path):
    cfg = var_reference.VARReferenceConfig().smoke()
    tokenizer = var_reference.SmallVQVAE(**var_reference.tokenizer_kwargs(cfg, 1, 8))
    net = VAR(**var_reference.transformer_kwargs(cfg, 10))
    ref = var_reference.VARReference(net=net, class_name="VAR", init_kwargs=var_reference.transformer_kwargs(cfg, 10),
                                     tokenizer=tokenizer, tokenizer_kwargs=var_reference.tokenizer_kwargs(cfg, 1, 8))
    payload = torch.load(var_reference.save(tmp_path / "v2.pt", ref), weights_only=True)
    payload.pop("tokenizer_class")
    torch.save(dict(payload, format=var_reference.FORMAT_V1), tmp_path / "v1.pt")
    assert type(var_reference.load(tmp_path / "v1.pt").tokenizer).__name__ == "SmallVQVAE"


def test_sizes_are_read_from_a_d16_state_dict():
    kwargs = official_var_kwargs(16)
    with torch.device("meta"):   # shapes only: the 310M-parameter network is never materialised
        state_dict = VAR(**{k: v for k, v in kwargs.items() if not k.endswith("_if_available")}).state_dict()
    state_dict["lvl_1L"] = torch.cat([torch.full((p * p,), i) for i, p in enumerate(kwargs["patch_nums"])])[None]
    read = official.var_kwargs(state_dict)
    assert (read["depth"], read["embed_dim"], read["num_heads"], read["num_classes"]) == (16, 1024, 16, 1000)
    assert read["patch_nums"] == [1, 2, 3, 4, 5, 6, 8, 10, 13, 16] and read["shared_aln"] is False
    assert (read["vocab_size"], read["z_channels"]) == (4096, 32)


def test_a_given_depth_must_match_the_checkpoint(pair):
    assert var_reference.load_official(config(pair, checkpoint_depth=2)).meta["depth"] == 2
    with pytest.raises(ValueError, match="2 blocks, but depth 16"):
        var_reference.load_official(config(pair, checkpoint_depth=16))


def test_the_data_must_fit_the_checkpoint(pair):
    with pytest.raises(ValueError, match="10 classes; the data has 1000"):
        var_reference.load_official(config(pair), label_dim=1000)
    with pytest.raises(ValueError, match="64-px images; the data is 256 px"):
        var_reference.load_official(config(pair), resolution=256)


def test_both_files_are_required():
    with pytest.raises(ValueError, match="needs both"):
        var_reference.VARReferenceConfig(checkpoint="var_d16.pth")


def test_bad_files_are_refused_with_their_names(pair, tmp_path):
    with open(tmp_path / "code.pth", "wb") as stream:   # a pickle that needs code (a class) to load
        pickle.dump({"x": argparse.Namespace(a=1)}, stream)
    torch.save({"model": {"a": torch.zeros(1)}}, tmp_path / "wrapped.pth")
    torch.save({"a": torch.zeros(1)}, tmp_path / "other.pth")
    cases = {"code.pth": "not a weights-only torch file", "wrapped.pth": "plain state dict",
             "other.pth": "lacks", "missing.pth": "no file"}
    for name, message in cases.items():
        with pytest.raises((ValueError, FileNotFoundError), match=message) as error:
            var_reference.load_official(config((tmp_path / name, pair[1])))
        assert name in str(error.value)
    with pytest.raises(ValueError, match="lacks"):   # the two files swapped
        var_reference.load_official(config((pair[1], pair[0])))


def test_a_vqvae_that_does_not_fit_the_transformer_is_refused(pair, tmp_path):
    state_dict = torch.load(pair[1], weights_only=True)
    state_dict["quantize.embedding.weight"] = torch.zeros(32, 8)   # V = 32, the VAR predicts 64 codes
    torch.save(state_dict, tmp_path / "vae32.pth")
    with pytest.raises(ValueError, match="V=64.*V=32"):
        var_reference.load_official(config((pair[0], tmp_path / "vae32.pth")))
