"""ddo_lib.edm.export: our networks back into the official EDM/EDM2 pickle format, and safetensors.

Oracles: the template written in the official layout (tests/support/official_format.py), our own
restricted loader, and a stand-in for the official loading mechanism (`pickle.load` with a
`torch_utils.persistence` that executes the embedded source, as NVlabs/edm does).
"""
import contextlib
import copy
import pickle
import sys
import types

import numpy as np
import pytest
import torch

from ddo_lib.edm import export_official, export_safetensors
from ddo_lib.edm.checkpoint import ALLOWED_GLOBALS, load_official
from official_format import Persistent, edm_data, globals_in, official_net, write_official

# Embedded source for templates that the official mechanism below can execute: our classes carry the
# official class names (EDMPrecond, SongUNet, UNetBlock, ... / Precond, UNet, Block, MPConv, ...).
RUNNABLE_SRC = "\n".join([*(f"from ddo_lib.edm.{module} import *"
                           for module in ("layers", "networks", "networks_edm2", "precond")),
                         *(f"class {name}: pass" for name in ("EDMLoss", "AugmentPipe", "StabilityVAEEncoder"))])


@contextlib.contextmanager
def official_loading():
    """`torch_utils.persistence._reconstruct_persistent_obj` as the official code behaves: execute the
    embedded source in a fresh module, take the named class, set the pickled state."""
    persistence, util = types.ModuleType("torch_utils.persistence"), types.ModuleType("dnnlib.util")

    def _reconstruct_persistent_obj(meta):
        module = types.ModuleType("_imported_module")
        exec(compile(meta["module_src"], "<module_src>", "exec"), module.__dict__)  # noqa: S102 (test oracle)
        cls = module.__dict__[meta["class_name"]]
        obj = cls.__new__(cls)
        obj.__setstate__(meta["state"]) if hasattr(obj, "__setstate__") else obj.__dict__.update(meta["state"])
        return obj

    class EasyDict(dict):
        pass

    persistence._reconstruct_persistent_obj, util.EasyDict = _reconstruct_persistent_obj, EasyDict
    modules = {"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": persistence,
               "dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": util}
    sys.modules.update(modules)
    try:
        yield util
    finally:
        for name in modules:
            del sys.modules[name]


def perturbed(net, seed=0):
    """A copy of `net` with every floating tensor moved (as a finetuned network would be)."""
    generator = torch.Generator().manual_seed(seed)
    out = copy.deepcopy(net)
    with torch.no_grad():
        for tensor in out.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.01 * torch.randn(tensor.shape, generator=generator))
    return out


@pytest.fixture
def edm_template(tmp_path, official_fixture):
    fixture, net = official_net(official_fixture, "edm_ddpmpp_tiny.pt")
    kwargs = {**fixture["init_kwargs"], "sigma_data": np.float64(0.5), "dropout": np.float64(0.0)}
    path = write_official(tmp_path / "template.pkl", edm_data(net), net, "EDMPrecond", kwargs,
                          module_src=RUNNABLE_SRC)
    return fixture, net, path


def test_edm_export_round_trips_through_our_loader(tmp_path, edm_template):
    fixture, net, template = edm_template
    tuned = perturbed(net)
    out = export_official(tuned, template, tmp_path / "final.pkl")
    loaded, extras = load_official(out)
    for key, tensor in tuned.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    _, template_extras = load_official(template)
    assert extras == {**template_extras, "module_src_sha256": template_extras["module_src_sha256"]}
    assert globals_in(out) == globals_in(template)  # the same official globals, nothing new
    assert globals_in(out) <= set(ALLOWED_GLOBALS)
    case = fixture["cases"][0]
    with torch.no_grad():
        assert torch.equal(loaded(case["x"], case["sigma"], case["class_labels"]),
                           tuned(case["x"], case["sigma"], case["class_labels"]))


def test_edm_export_loads_with_the_official_mechanism(tmp_path, edm_template):
    fixture, net, template = edm_template
    tuned = perturbed(net, seed=1)
    out = export_official(tuned, template, tmp_path / "final.pkl")
    with official_loading(), open(out, "rb") as file:
        data = pickle.load(file)  # what NVlabs/edm generate.py does
    ema = data["ema"]
    assert type(ema).__name__ == "EDMPrecond" and isinstance(ema, torch.nn.Module)
    assert type(data["loss_fn"]).__name__ == "EDMLoss"
    for case in fixture["cases"]:
        with torch.no_grad():
            theirs = ema(case["x"], case["sigma"], case["class_labels"])
            ours = tuned(case["x"], case["sigma"], case["class_labels"])
        assert torch.equal(theirs, ours), case["name"]


def test_edm2_export_is_float16_easydict_with_encoder(tmp_path, official_fixture):
    fixture, original = official_net(official_fixture, "edm2_tiny.pt")
    ema = copy.deepcopy(original).half()
    scale = np.float32(0.5) / np.array([4.17, 4.62, 3.71, 3.28], dtype=np.float32)

    def make(fake):
        encoder = Persistent("StabilityVAEEncoder", {"vae_name": "stabilityai/sd-vae-ft-mse", "scale": scale,
                                                     "final_std": np.float64(0.5), "_vae": None})
        return fake.EasyDict(encoder=encoder, ema=ema, dataset_kwargs=fake.EasyDict(resolution=8))

    kwargs = {**fixture["init_kwargs"], "sigma_data": np.float32(0.5)}
    template = write_official(tmp_path / "edm2.pkl", make, ema, "Precond", kwargs, module_src=RUNNABLE_SRC)
    tuned = perturbed(original)  # float32, as DDO trains it
    out = export_official(tuned, template, tmp_path / "final.pkl")
    loaded, extras = load_official(out)
    assert extras["stored_dtypes"] == ["float16"]  # as released
    for key, tensor in tuned.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor.half().float()), key
    assert torch.equal(extras["encoder"]["scale"], torch.from_numpy(scale))
    with official_loading() as util, open(out, "rb") as file:
        data = pickle.load(file)  # NVlabs/edm2 generate_images.py
        assert type(data) is util.EasyDict and type(data["dataset_kwargs"]) is util.EasyDict
    assert next(data["ema"].parameters()).dtype == torch.float16
    assert type(data["encoder"]).__name__ == "StabilityVAEEncoder"


def test_export_refuses_a_different_architecture(tmp_path, edm_template, official_fixture):
    _, _, template = edm_template
    _, other = official_net(official_fixture, "edm_adm_tiny.pt")
    with pytest.raises(ValueError, match="does not match the template"):
        export_official(other, template, tmp_path / "final.pkl")
    assert not (tmp_path / "final.pkl").exists()


def test_export_refuses_non_finite_weights_and_keeps_the_old_file(tmp_path, edm_template):
    _, net, template = edm_template
    out = export_official(net, template, tmp_path / "final.pkl")
    before = out.read_bytes()
    broken = copy.deepcopy(net)
    with torch.no_grad():
        next(broken.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        export_official(broken, template, out)
    assert out.read_bytes() == before


def test_export_refuses_a_template_that_is_not_an_official_pickle(tmp_path, edm_template):
    _, net, _ = edm_template
    bad = tmp_path / "weights.pt"
    torch.save(net.state_dict(), bad)
    with pytest.raises(ValueError, match="zip archive"):
        export_official(net, bad, tmp_path / "final.pkl")
    with pytest.raises(FileNotFoundError, match="template not found"):
        export_official(net, tmp_path / "missing.pkl", tmp_path / "final.pkl")


def test_safetensors_export_round_trip(tmp_path, edm_template):
    from safetensors.torch import load_file

    _, net, _ = edm_template
    path = export_safetensors(net, tmp_path / "final.safetensors", {"round": 3})
    loaded = load_file(path)
    assert list(loaded) == sorted(net.state_dict()) or set(loaded) == set(net.state_dict())
    for key, tensor in net.state_dict().items():
        assert torch.equal(loaded[key], tensor), key
