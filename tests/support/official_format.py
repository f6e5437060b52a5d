"""Official EDM/EDM2 pickles written clean-room for tests (NVlabs/edm `torch_utils/persistence.py` format).

Fake `torch_utils.persistence` and `dnnlib.util` modules are registered only while pickling, so the files
carry the same global names and opcodes as NVIDIA's writer, with a placeholder instead of embedded source.
"""
import contextlib
import pickle
import sys
import types

import numpy as np
from torch import nn

from ddo_lib.edm import checkpoint
from ddo_lib.edm.precond import network_from_official

CONTAINERS = (nn.ModuleDict, nn.ModuleList, nn.Sequential)
FAKE_MODULES = ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util")
SKIP_SCALE = np.float64(np.sqrt(0.5))  # a numpy scalar as official block kwargs carry them


# ----------------------------------------------------------------------------------------------------
# Official-format writer (test only).

class Persistent:
    """A non-module persistent object (EDMLoss, AugmentPipe, encoder) given by class name and __dict__."""

    def __init__(self, class_name, state):
        self.class_name, self.state = class_name, state


@contextlib.contextmanager
def fake_official_modules():
    """Register `torch_utils.persistence` and `dnnlib.util` stand-ins; remove them afterwards."""
    persistence, util = types.ModuleType("torch_utils.persistence"), types.ModuleType("dnnlib.util")

    def _reconstruct_persistent_obj(meta):
        raise AssertionError("test pickles must never be loaded with the official mechanism")

    class EasyDict(dict):
        pass

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    persistence._reconstruct_persistent_obj, util.EasyDict = _reconstruct_persistent_obj, EasyDict
    modules = {"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": persistence,
               "dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": util}
    assert not set(modules) & set(sys.modules)
    sys.modules.update(modules)
    try:
        yield types.SimpleNamespace(reconstruct=_reconstruct_persistent_obj, EasyDict=EasyDict)
    finally:
        for name in modules:
            del sys.modules[name]


class _OfficialStyle:
    """reducer_override writing every non-container module as NVlabs/edm `torch_utils/persistence.py` does."""

    def setup(self, reconstruct, root, root_name, root_kwargs, module_src):
        self.reconstruct, self.root, self.root_name = reconstruct, root, root_name
        self.root_kwargs, self.module_src = root_kwargs, module_src

    def _meta(self, class_name, state):
        return {"type": "class", "version": 6, "module_src": self.module_src, "class_name": class_name,
                "state": state}

    def reducer_override(self, obj):
        if isinstance(obj, Persistent):
            return self.reconstruct, (self._meta(obj.class_name, dict(obj.state)),)
        if isinstance(obj, nn.Module) and not isinstance(obj, CONTAINERS):
            is_root = obj is self.root
            kwargs = self.root_kwargs if is_root else {"skip_scale": SKIP_SCALE}
            state = {**obj.__dict__, "_init_args": (), "_init_kwargs": kwargs}
            return self.reconstruct, (self._meta(self.root_name if is_root else type(obj).__name__, state),)
        return NotImplemented


class OfficialStylePickler(_OfficialStyle, pickle.Pickler):
    pass


class Numpy1StylePickler(_OfficialStyle, pickle._Pickler):
    """Spells numpy globals as numpy 1.x did (`numpy.core.multiarray.*`)."""

    def save_global(self, obj, name=None):
        multiarray = checkpoint._np_multiarray
        if obj is multiarray.scalar or obj is multiarray._reconstruct:
            self.save("numpy.core.multiarray")
            self.save(obj.__name__)
            self.write(pickle.STACK_GLOBAL)
            self.memoize(obj)
            return
        super().save_global(obj, name)


def write_official(path, make_data, ema, class_name, init_kwargs, *, numpy1=False, module_src="# placeholder"):
    """Pickle `make_data(fake)` (protocol 4) with `ema` persisted as `class_name`; fake modules gone after."""
    with fake_official_modules() as fake, open(path, "wb") as file:
        pickler = (Numpy1StylePickler if numpy1 else OfficialStylePickler)(file, protocol=4)
        pickler.setup(fake.reconstruct, ema, class_name, init_kwargs, module_src)
        pickler.dump(make_data(fake))
    assert not set(FAKE_MODULES) & set(sys.modules)
    return path


def globals_in(path):
    """(module, name) of every global the pickle references, recorded without resolving any."""
    found = []

    class Recorder(checkpoint.RestrictedUnpickler):
        def find_class(self, module, name):
            found.append((module, name))
            return super().find_class(module, name)

    with open(path, "rb") as file:
        Recorder(file).load()
    return set(found)


def official_net(official_fixture, name):
    fixture = official_fixture(name)
    net = network_from_official(fixture["class_name"], fixture["init_kwargs"])
    net.load_state_dict(fixture["state_dict"])
    return fixture, net.eval().requires_grad_(False)


def edm_data(ema):
    def make(fake):
        return {"ema": ema,
                "loss_fn": Persistent("EDMLoss", {"_init_args": (), "_init_kwargs": {},
                                                  "P_mean": -1.2, "P_std": np.float64(1.2), "sigma_data": 0.5}),
                "augment_pipe": Persistent("AugmentPipe", {"p": np.float32(0.12), "xflip": 1e8, "yflip": 1}),
                "dataset_kwargs": {"class_name": "training.dataset.ImageFolderDataset", "path": "c10.zip",
                                   "use_labels": True, "xflip": False, "cache": True, "resolution": 16,
                                   "max_size": np.int64(50000)}}
    return make
