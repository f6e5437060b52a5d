"""The rounds stage's hand-off: final.safetensors always, final.pkl when p_ref came from an official pickle."""
import copy
import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ddo_lib.config import ReferenceConfig
from ddo_lib.edm import load_official, reference as edm_reference
from ddo_lib.pipeline import evaluation
from ddo_lib.reference import Reference
from official_format import edm_data, official_net, write_official


@pytest.fixture
def official_reference(tmp_path, official_fixture):
    fixture, net = official_net(official_fixture, "edm_ddpmpp_tiny.pt")
    kwargs = {**fixture["init_kwargs"], "sigma_data": np.float64(0.5), "dropout": np.float64(0.0)}
    template = write_official(tmp_path / "official.pkl", edm_data(net), net, "EDMPrecond", kwargs)
    return edm_reference.build(dataclasses.replace(ReferenceConfig(), checkpoint=str(template)), dataset=None)


def finetuned(net):
    tuned = copy.deepcopy(net)
    with torch.no_grad():
        for p in tuned.parameters():
            p.mul_(1.01)
    return tuned


def test_export_final_writes_official_pickle_and_safetensors(tmp_path, official_reference):
    tuned = finetuned(official_reference.net)
    written = evaluation.export_final(tmp_path / "run", official_reference, tuned, round_index=2)
    assert [p.name for p in written] == ["final.safetensors", "final.pkl"]
    loaded, extras = load_official(tmp_path / "run" / "final.pkl")
    assert extras["class_name"] == "EDMPrecond" and extras["loss"]["class_name"] == "EDMLoss"
    weights = load_file(tmp_path / "run" / "final.safetensors")
    for key, tensor in tuned.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor) and torch.equal(weights[key], tensor), key


def test_a_pretrained_reference_gets_safetensors_only(tmp_path, official_reference):
    pretrained = Reference(net=official_reference.net, class_name="EDMPrecond",
                           init_kwargs=official_reference.init_kwargs, meta=dict(source="pretrained"))
    written = evaluation.export_final(tmp_path, pretrained, pretrained.net, round_index=0)
    assert [p.name for p in written] == ["final.safetensors"]


def test_a_vanished_template_is_named(tmp_path, official_reference):
    gone = Reference(net=official_reference.net, class_name="EDMPrecond", init_kwargs=official_reference.init_kwargs,
                     meta=dict(source=str(tmp_path / "moved.pkl")))
    with pytest.raises(FileNotFoundError, match="moved.pkl"):
        evaluation.export_final(tmp_path, gone, gone.net, round_index=0)
