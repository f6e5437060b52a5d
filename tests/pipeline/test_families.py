"""The family dispatch the notebooks use: one template, every model family."""
import dataclasses
import pathlib

import pytest
import torch

from ddo_lib import data as data_lib
from ddo_lib.checkpoint import save_checkpoint
from ddo_lib.config import ReferenceConfig
from ddo_lib.pipeline import families as models

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def digits():
    images, labels = data_lib.load_digits_dataset(8, dequantize_seed=0)
    return data_lib.make_dataset(images[:64], labels[:64], name="digits64")


def test_unknown_family_and_foreign_file_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown model family 'gan'"):
        models.check_family("gan")
    save_checkpoint(tmp_path / "other.pt", dict(format="someone-else/3", weights={}))
    with pytest.raises(ValueError, match="not a ddo_lib reference file.*someone-else/3"):
        models.load_reference(tmp_path / "other.pt")


@pytest.mark.parametrize("family", ["edm", "var"])
def test_build_save_load_and_family_round_trip(family, digits, tmp_path):
    cfg = models.reference_config(family, REPO / "params.yaml", smoke=True)
    if family == "edm":
        assert isinstance(cfg, ReferenceConfig)
    built = models.build_reference(family, cfg, digits, progress=False)
    assert models.family_name(built) == family
    path = models.save_reference(tmp_path / "ref.pt", built)
    loaded = models.load_reference(path)
    assert models.family_name(loaded) == family
    for key, value in built.net.state_dict().items():
        assert torch.equal(value, loaded.net.state_dict()[key]), key
    generator_family = models.generator_family(loaded, sample_steps=3, batch_size=8)
    images = generator_family.sample(loaded.net, [0, 1, 2], torch.tensor([0, 1, 2]))
    assert images.dtype == torch.uint8 and images.shape == (3, 1, 8, 8)
    again = generator_family.sample(loaded.net, [2], torch.tensor([2]))
    assert torch.equal(again[0], images[2])                  # image i depends only on seed i
    copy = models.with_network(loaded, loaded.net, steps=5)
    assert models.family_name(copy) == family and copy.meta == {"steps": 5}
    assert getattr(copy, "tokenizer", None) is getattr(loaded, "tokenizer", None)
    summary = models.reference_summary(built, cfg, digits)
    assert summary["family"] == family and summary["final_loss"] is not None


def test_a_finished_var_reference_is_reused_only_for_the_same_config(digits, tmp_path, monkeypatch):
    from ddo_lib.var import reference as var_reference

    cfg = models.reference_config("var", REPO / "params.yaml", smoke=True)
    state = tmp_path / "state.pt"
    first = models.build_reference("var", cfg, digits, state_path=state, progress=False)
    assert state.exists()
    monkeypatch.setattr(var_reference, "build", lambda *a, **k: pytest.fail("retrained a finished reference"))
    again = models.build_reference("var", cfg, digits, state_path=state, progress=False)
    for key, value in first.net.state_dict().items():
        assert torch.equal(value, again.net.state_dict()[key])
    assert again.history == first.history and again.history  # the stage re-plots the loss from it
    assert again.meta == first.meta                           # so the saved reference file is the same
    monkeypatch.undo()
    other = models.build_reference("var", dataclasses.replace(cfg, seed=1), digits, state_path=state, progress=False)
    assert any(not torch.equal(v, other.net.state_dict()[k]) for k, v in first.net.state_dict().items())


@pytest.mark.parametrize("family", ["edm", "var"])
def test_pretraining_on_a_streamed_folder_is_refused_clearly(family, tmp_path):
    from image_folders import write_imagenet_folder

    dataset = data_lib.load_any(write_imagenet_folder(tmp_path / "imagenet", classes=2, per_class=2), resolution=8)
    cfg = models.reference_config(family, REPO / "params.yaml", smoke=True)
    with pytest.raises(ValueError, match="in-memory data set.*official checkpoint"):
        models.build_reference(family, cfg, dataset)
