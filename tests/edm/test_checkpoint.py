"""Tests for the safe EDM/EDM2 pickle loader and our checkpoint I/O (NVlabs/edm `torch_utils/persistence.py` format).

The official-format pickles are built clean-room by tests/support/official_format.py.
"""
import copy
import hashlib
import os
import sys

import numpy as np
import pytest
import torch
from official_format import (  # tests/support, on sys.path via tests/conftest.py
    Persistent,
    edm_data,
    globals_in,
    official_net,
    write_official,
)
from torch import nn

from ddo_lib.checkpoint import load_checkpoint, save_checkpoint
from ddo_lib.edm import checkpoint
from ddo_lib.edm.checkpoint import (
    UnsafePickleError,
    load_official,
    read_official_pickle,
    state_dict_from_record,
)


def run_case(net, case):
    labels, augment = case["class_labels"], case.get("augment_labels")
    with torch.no_grad():
        return net(case["x"], case["sigma"], labels) if augment is None else \
            net(case["x"], case["sigma"], labels, augment_labels=augment)


@pytest.fixture(scope="module")
def edm_ddpmpp(official_fixture):
    return official_net(official_fixture, "edm_ddpmpp_tiny.pt")


@pytest.fixture
def edm_pickle(tmp_path, edm_ddpmpp):
    fixture, net = edm_ddpmpp
    kwargs = {**fixture["init_kwargs"], "sigma_data": np.float64(0.5), "dropout": np.float64(0.0)}
    return write_official(tmp_path / "edm.pkl", edm_data(net), net, "EDMPrecond", kwargs)


# ----------------------------------------------------------------------------------------------------
# Round trips.

def test_edm_pickle_uses_only_allow_listed_globals(edm_pickle):
    found = globals_in(edm_pickle)
    assert ("torch_utils.persistence", "_reconstruct_persistent_obj") in found
    assert ("torch.storage", "_load_from_bytes") in found  # legacy storage path of plain pickle
    assert ("torch._utils", "_rebuild_parameter") in found
    assert ("torch.nn.modules.container", "ModuleDict") in found
    assert ("numpy._core.multiarray", "scalar") in found
    assert found <= set(checkpoint.ALLOWED_GLOBALS)


def test_edm_round_trip_is_bit_exact(edm_pickle, edm_ddpmpp):
    fixture, original = edm_ddpmpp
    net, extras = load_official(edm_pickle)
    assert "torch_utils" not in sys.modules and "dnnlib" not in sys.modules
    ours, theirs = net.state_dict(), original.state_dict()
    assert list(ours) == list(theirs) == fixture["state_dict_keys"]
    for key, tensor in theirs.items():
        assert ours[key].dtype == torch.float32 and torch.equal(ours[key], tensor), key
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    for case in fixture["cases"]:
        D_x = run_case(net, case)
        assert torch.equal(D_x, run_case(original, case)), case["name"]
        assert (D_x - case["D_x"]).abs().max() <= 1e-5 * case["D_x"].abs().max(), case["name"]


def test_edm_extras_round_trip(edm_pickle, edm_ddpmpp):
    fixture, _ = edm_ddpmpp
    _, extras = load_official(edm_pickle)
    assert extras["class_name"] == "EDMPrecond"
    assert extras["init_kwargs"] == {**fixture["init_kwargs"], "sigma_data": 0.5, "dropout": 0.0}
    assert type(extras["init_kwargs"]["sigma_data"]) is float
    assert extras["module_src_sha256"] == hashlib.sha256(b"# placeholder").hexdigest()
    assert extras["stored_dtypes"] == ["float32"]
    assert extras["loss"] == {"class_name": "EDMLoss", "P_mean": -1.2, "P_std": 1.2, "sigma_data": 0.5}
    assert type(extras["loss"]["P_std"]) is float
    assert extras["augment"] == {"class_name": "AugmentPipe", "p": float(np.float32(0.12)), "xflip": 1e8, "yflip": 1}
    assert extras["dataset_kwargs"]["max_size"] == 50000 and type(extras["dataset_kwargs"]["max_size"]) is int
    assert extras["dataset_kwargs"]["class_name"] == "training.dataset.ImageFolderDataset"
    assert extras["encoder"] is None


def test_record_tree_flattens_like_state_dict(tmp_path):
    """Parameters then buffers per module; None and non-persistent buffers skipped; ModuleList recursion."""
    tree = nn.Sequential(nn.Linear(3, 4, bias=False), nn.ModuleList([nn.BatchNorm1d(4), nn.Conv1d(4, 2, 1)]))
    tree[1][1].register_buffer("scratch", torch.ones(2), persistent=False)
    tree[1][1].register_buffer("empty", None)
    tree.requires_grad_(False)
    tree[1][0].weight.note = "python state on a Parameter"  # pickled via _rebuild_parameter_with_state
    path = write_official(tmp_path / "tree.pkl", lambda fake: {"ema": tree}, tree, "Tree", {})
    assert ("torch._utils", "_rebuild_parameter_with_state") in globals_in(path)
    record = read_official_pickle(path)["ema"]
    flat = state_dict_from_record(record)
    expected = tree.state_dict()
    assert list(flat) == list(expected)
    assert "1.1.scratch" not in flat and "0.bias" not in flat
    assert all(torch.equal(flat[key], tensor) for key, tensor in expected.items())
    assert record.state["_modules"]["1"].class_name == "ModuleList"


def test_adm_round_trip_matches_official_outputs(tmp_path, official_fixture):
    fixture, original = official_net(official_fixture, "edm_adm_tiny.pt")
    path = write_official(tmp_path / "adm.pkl", edm_data(original), original, "EDMPrecond", fixture["init_kwargs"])
    net, extras = load_official(path)
    assert list(net.state_dict()) == fixture["state_dict_keys"]
    assert all(torch.equal(net.state_dict()[k], v) for k, v in original.state_dict().items())
    for case in fixture["cases"]:
        D_x = run_case(net, case)
        assert (D_x - case["D_x"]).abs().max() <= 1e-5 * case["D_x"].abs().max(), case["name"]
    assert extras["init_kwargs"]["model_type"] == "DhariwalUNet"


def test_edm2_fp16_easydict_numpy1_round_trip(tmp_path, official_fixture):
    fixture, original = official_net(official_fixture, "edm2_tiny.pt")
    ema = copy.deepcopy(original).half()  # official EDM2 EMA pickles are float16, buffers included
    scale = np.float32(0.5) / np.array([4.17, 4.62, 3.71, 3.28], dtype=np.float32)
    kwargs = {**fixture["init_kwargs"], "sigma_data": np.float32(0.5)}

    def make(fake):
        encoder = Persistent("StabilityVAEEncoder", {"vae_name": "stabilityai/sd-vae-ft-mse", "scale": scale,
                                                     "final_std": np.float64(0.5), "_vae": None, "batch_size": 8})
        loss = Persistent("EDM2Loss", {"P_mean": np.float64(-0.8), "P_std": np.float64(1.6), "sigma_data": 0.5})
        return fake.EasyDict(encoder=encoder, loss_fn=loss, ema=ema,
                             dataset_kwargs=fake.EasyDict(class_name="training.dataset.ImageFolderDataset"))

    path = write_official(tmp_path / "edm2.pkl", make, ema, "Precond", kwargs, numpy1=True)
    found = globals_in(path)
    assert ("numpy.core.multiarray", "scalar") in found and ("dnnlib.util", "EasyDict") in found
    assert ("numpy._core.multiarray", "scalar") not in found

    net, extras = load_official(path)
    rounded = copy.deepcopy(original).half().float()
    assert list(net.state_dict()) == fixture["state_dict_keys"]
    for key, tensor in ema.state_dict().items():
        assert tensor.dtype == torch.float16
        assert net.state_dict()[key].dtype == torch.float32
        assert torch.equal(net.state_dict()[key], tensor.float()), key
    for case in fixture["cases"]:
        with torch.no_grad():
            assert torch.equal(net(case["x"], case["sigma"], case["class_labels"]),
                               rounded(case["x"], case["sigma"], case["class_labels"])), case["name"]
    assert extras["class_name"] == "Precond" and extras["stored_dtypes"] == ["float16"]
    assert extras["loss"] == {"class_name": "EDM2Loss", "P_mean": -0.8, "P_std": 1.6, "sigma_data": 0.5}
    assert extras["encoder"]["vae_name"] == "stabilityai/sd-vae-ft-mse" and extras["encoder"]["final_std"] == 0.5
    assert torch.equal(extras["encoder"]["scale"], torch.from_numpy(scale))
    assert extras["augment"] is None
    assert extras["dataset_kwargs"] == {"class_name": "training.dataset.ImageFolderDataset"}


# ----------------------------------------------------------------------------------------------------
# Malicious pickles.

def hand_written(module, name, argument):
    """PROTO 2; GLOBAL module.name; (argument,) REDUCE; STOP."""
    encoded = argument.encode()
    return (b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"X" + len(encoded).to_bytes(4, "little") + encoded
            + b"\x85R.")


@pytest.mark.parametrize("module, name, make_argument", [
    ("os", "system", lambda marker: f"touch {marker}"),
    ("posix", "system", lambda marker: f"touch {marker}"),
    ("builtins", "exec", lambda marker: f"open({str(marker)!r}, 'w').close()"),
    ("builtins", "eval", lambda marker: f"open({str(marker)!r}, 'w').close()"),
])
def test_hand_written_global_is_refused(tmp_path, module, name, make_argument):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pkl"
    path.write_bytes(hand_written(module, name, make_argument(marker)))
    with pytest.raises(UnsafePickleError, match=f"'{module}.{name}'"):
        load_official(path)
    assert not marker.exists()


class _Popen:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import subprocess
        return subprocess.Popen, (["touch", str(self.marker)],)


def test_popen_nested_in_official_layout_is_refused(tmp_path, edm_ddpmpp):
    _, net = edm_ddpmpp
    marker = tmp_path / "marker"

    def make(fake):
        data = edm_data(net)(fake)
        data["dataset_kwargs"]["path"] = _Popen(marker)
        return data

    path = write_official(tmp_path / "evil.pkl", make, net, "EDMPrecond", {})
    with pytest.raises(UnsafePickleError, match="'subprocess.Popen'"):
        load_official(path)
    assert not marker.exists()


def test_module_src_is_never_executed(tmp_path, edm_ddpmpp):
    fixture, net = edm_ddpmpp
    marker = tmp_path / "marker"
    source = f"open({str(marker)!r}, 'w').close()\n"
    path = write_official(tmp_path / "src.pkl", edm_data(net), net, "EDMPrecond", fixture["init_kwargs"],
                          module_src=source)
    loaded, extras = load_official(path)
    assert not marker.exists()
    assert extras["module_src_sha256"] == hashlib.sha256(source.encode()).hexdigest()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in net.state_dict().items())


def test_mutating_an_allowed_global_does_not_leak_into_later_loads(tmp_path, edm_pickle, edm_ddpmpp):
    """BUILD on an allowed Python function changes only that load's private copy."""
    evil = b"\x80\x02ctorch.storage\n_load_from_bytes\n}X\x08\x00\x00\x00poisonedK\x01sb."
    path = tmp_path / "poison.pkl"
    path.write_bytes(evil)
    assert read_official_pickle(path).poisoned == 1  # the pickle did mutate the object it was given
    assert not hasattr(checkpoint.ALLOWED_GLOBALS[("torch.storage", "_load_from_bytes")], "poisoned")
    net, _ = load_official(edm_pickle)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in edm_ddpmpp[1].state_dict().items())


# ----------------------------------------------------------------------------------------------------
# Bad input.

def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pkl"):
        load_official(tmp_path / "nothere.pkl")


def test_torch_save_zip_is_named(tmp_path):
    path = tmp_path / "net.pt"
    torch.save({"ema": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="EDM/EDM2 training pickle.*zip archive"):
        load_official(path)


def test_legacy_torch_save_is_named(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"ema": torch.zeros(2)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match="legacy .*torch.save"):
        load_official(path)


def test_truncated_pickle(tmp_path, edm_pickle):
    data = edm_pickle.read_bytes()
    path = tmp_path / "cut.pkl"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_official(path)


@pytest.mark.parametrize("prefix, message", [(b"", "not a pickle"), (b"\x80\x04", "corrupt or truncated")])
def test_random_bytes(tmp_path, prefix, message):
    random_bytes = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    path = tmp_path / "noise.pkl"
    path.write_bytes(prefix + random_bytes.lstrip(b"\x80"))
    with pytest.raises(ValueError, match=message):
        load_official(path)


def test_unknown_layout_lists_keys(tmp_path, edm_ddpmpp):
    _, net = edm_ddpmpp
    path = write_official(tmp_path / "odd.pkl", lambda fake: {"G_ema": net, "step": 3}, net, "EDMPrecond", {})
    with pytest.raises(ValueError, match=r"\['G_ema', 'step'\]"):
        load_official(path)


def test_extra_tensor_is_reported(tmp_path, edm_ddpmpp):
    fixture, net = edm_ddpmpp
    extra = copy.deepcopy(net)
    extra.model.map_layer0.register_buffer("stowaway", torch.ones(3))
    path = write_official(tmp_path / "extra.pkl", edm_data(extra), extra, "EDMPrecond", fixture["init_kwargs"])
    with pytest.raises(ValueError, match=r"missing 0 \[\], unexpected 1 \['model.map_layer0.stowaway'\]"):
        load_official(path)


def test_mismatched_attribute_is_reported(tmp_path, edm_ddpmpp):
    fixture, net = edm_ddpmpp
    other = copy.deepcopy(net)
    other.sigma_data = 0.25  # recorded attribute disagrees with the constructor arguments
    path = write_official(tmp_path / "sd.pkl", edm_data(other), other, "EDMPrecond", fixture["init_kwargs"])
    with pytest.raises(ValueError, match="sigma_data"):
        load_official(path)


# ----------------------------------------------------------------------------------------------------
# Our own checkpoints.

def test_checkpoint_round_trip(tmp_path):
    payload = {"net": {"w": torch.randn(3, generator=torch.Generator().manual_seed(0))}, "step": 7,
               "rng": torch.get_rng_state(), "config": {"alpha": 4.0, "name": "cifar"}}
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, payload)
    loaded = load_checkpoint(path)
    assert loaded["step"] == 7 and loaded["config"] == payload["config"]
    assert torch.equal(loaded["net"]["w"], payload["net"]["w"]) and torch.equal(loaded["rng"], payload["rng"])
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_failed_save_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"step": 1})

    def fail_midway(obj, file):
        file.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path) == {"step": 1}
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_checkpoint_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_checkpoint(tmp_path / "absent.pt")
    with pytest.raises(FileNotFoundError, match="no_dir"):
        save_checkpoint(tmp_path / "no_dir" / "c.pt", {})
    with pytest.raises(TypeError, match="dict"):
        save_checkpoint(tmp_path / "c.pt", [1])
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="save_checkpoint"):
        load_checkpoint(corrupt)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"obj": Persistent("X", {})}, unsafe)  # needs a non-allow-listed global under weights_only
    with pytest.raises(ValueError, match="weights_only"):
        load_checkpoint(unsafe)
