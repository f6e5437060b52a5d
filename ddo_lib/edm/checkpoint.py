"""Safe loader for official EDM/EDM2 training pickles, and our own checkpoint files (docs/scaling.md).

Official `.pkl` files embed the source code of every network class (`torch_utils.persistence`), which a
plain `pickle.load` executes. We never execute it. A restricted unpickler maps an explicit allow-list of
globals (`ALLOWED_GLOBALS`) to inert records or to tensor/numpy constructors and refuses everything else,
naming the offending global. The record tree is flattened into a state_dict (`state_dict_from_record`); the network is
rebuilt in our own classes from the recorded constructor arguments and the tensors are loaded strictly.

Our own checkpoints are `torch.save` files, written atomically and read with `weights_only=True`.
"""
from __future__ import annotations

import collections
import hashlib
import io
import logging
import math
import os
import pathlib
import pickle
import types
import warnings
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import nn

from ddo_lib.edm.precond import network_from_official

try:  # numpy >= 2
    from numpy._core import multiarray as _np_multiarray
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _np_multiarray

logger = logging.getLogger(__name__)

EXPECTED = "an EDM/EDM2 training pickle (a .pkl written by pickle.dump with 'ema' at the top level)"
LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C   # first object of a pre-1.6 (non-zip) torch.save file
POSITIONAL_ARGUMENTS = ("img_resolution", "img_channels", "label_dim")  # shared by every official Precond
CHECKED_ATTRIBUTES = ("img_resolution", "img_channels", "label_dim", "sigma_min", "sigma_max", "sigma_data",
                      "beta_d", "beta_min", "M", "epsilon_t", "C_1", "C_2")


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle references a global outside the allow-list (`ALLOWED_GLOBALS`); nothing was executed."""


# ----------------------------------------------------------------------------------------------------
# Inert records.

class ModuleRecord:
    """Inert stand-in for a pickled object: its class name and its __dict__ (`state`), nothing callable.

    Persistent objects (`torch_utils.persistence`) also carry the persistence format `version` and the
    sha256 of their embedded `module_src` (kept for provenance, never compiled). Container records
    (ModuleDict, ModuleList, Sequential) are filled by pickle's BUILD through `__setstate__`.
    """

    class_name: str = ""
    version: int | None = None
    module_src_sha256: str | None = None

    def __init__(self, class_name: str, state: dict, version: int | None = None,
                 module_src_sha256: str | None = None):
        self.class_name, self.state = class_name, state
        self.version, self.module_src_sha256 = version, module_src_sha256

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"{self.class_name} state must be a dict; found {type(state).__name__}")
        self.state = dict(state)

    def __repr__(self) -> str:
        return f"ModuleRecord({self.class_name!r}, keys={sorted(self.state)})"


def _container_record(class_name: str) -> type:
    return type(f"{class_name}Record", (ModuleRecord,), {"class_name": class_name})


def _persistent_record(meta: Any) -> ModuleRecord:
    """`torch_utils.persistence._reconstruct_persistent_obj(meta)` without exec: keep name, version, state."""
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise pickle.UnpicklingError(f"persistent object meta must be a dict with type 'class'; found {meta!r:.200}")
    class_name, state, module_src = meta.get("class_name"), meta.get("state"), meta.get("module_src")
    if not isinstance(class_name, str) or not isinstance(state, dict) or not isinstance(module_src, str):
        raise pickle.UnpicklingError("persistent object meta needs str class_name, dict state and str module_src; "
                                     f"found keys {sorted(meta)}")
    digest = hashlib.sha256(module_src.encode("utf-8")).hexdigest()
    return ModuleRecord(class_name, dict(state), version=meta.get("version"), module_src_sha256=digest)


# ----------------------------------------------------------------------------------------------------
# Tensor and numpy constructors (hooks and extra Python state are dropped).

def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    """`torch._utils._rebuild_tensor_v2`: a view of an already-loaded storage; pickled hooks are dropped."""
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise pickle.UnpicklingError(f"tensor storage expected; found {type(storage).__name__}")
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
                                           collections.OrderedDict(), metadata)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    """`torch._utils._rebuild_parameter[_with_state]`: nn.Parameter(data); hooks and Python state dropped."""
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError(f"parameter data must be a tensor; found {type(data).__name__}")
    return nn.Parameter(data, requires_grad)


def _load_storage_bytes(data: bytes):
    """`torch.storage._load_from_bytes`: one storage in legacy torch.save format, read with weights_only."""
    if not isinstance(data, bytes):
        raise pickle.UnpicklingError(f"storage bytes expected; found {type(data).__name__}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # TypedStorage deprecation notice
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _numpy_reconstruct(subtype, shape, dtype):
    """`numpy._core.multiarray._reconstruct`, restricted to plain ndarrays (EDM2 encoder arrays)."""
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"numpy _reconstruct of {subtype!r} refused; only numpy.ndarray")
    return _np_multiarray._reconstruct(subtype, shape, dtype)


ALLOWED_GLOBALS = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_record,
    ("torch.nn.modules.container", "ModuleDict"): _container_record("ModuleDict"),
    ("torch.nn.modules.container", "ModuleList"): _container_record("ModuleList"),
    ("torch.nn.modules.container", "Sequential"): _container_record("Sequential"),
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("dnnlib.util", "EasyDict"): dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_bytes,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    **{(f"{spelling}.multiarray", "scalar"): _np_multiarray.scalar for spelling in ("numpy.core", "numpy._core")},
    **{(f"{spelling}.multiarray", "_reconstruct"): _numpy_reconstruct for spelling in ("numpy.core", "numpy._core")},
}


def _fresh_copy(obj: Any) -> Any:
    """A private copy of an allowed Python function or record class (C types and functions are immutable)."""
    if isinstance(obj, types.FunctionType):
        return types.FunctionType(obj.__code__, obj.__globals__, obj.__name__, obj.__defaults__, obj.__closure__)
    if isinstance(obj, type) and issubclass(obj, ModuleRecord):
        return _container_record(obj.class_name)
    return obj


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only `ALLOWED_GLOBALS` and never imports or executes code.

    Each instance resolves globals to private copies of our Python-level functions and classes, so a
    pickle that mutates one (BUILD on a global) cannot change how a later file is loaded.
    """

    def __init__(self, file: BinaryIO):
        super().__init__(file)
        self._allowed = {key: _fresh_copy(obj) for key, obj in ALLOWED_GLOBALS.items()}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refused global '{module}.{name}': not in the EDM/EDM2 allow-list "
                                    "(ALLOWED_GLOBALS); nothing was imported or executed") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(f"persistent id {pid!r:.80} found; EDM/EDM2 pickles use none "
                                     "(is this a torch.save file?)")


# ----------------------------------------------------------------------------------------------------
# Reading and flattening.

def _describe_head(head: bytes) -> str:
    if not head:
        return "an empty file"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (a torch.save file? read it with load_checkpoint or torch.load(weights_only=True))"
    return f"bytes starting with {head[:8]!r}, not a pickle of protocol >= 2"


def read_official_pickle(path: str | os.PathLike, unpickler: type[RestrictedUnpickler] | None = None) -> Any:
    """Unpickle an official EDM/EDM2 `.pkl` with `RestrictedUnpickler` (or a subclass: the same allow-list,
    other records); persistent objects become ModuleRecords."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official checkpoint not found: {path}")
    with open(path, "rb") as file:
        head = file.read(8)
        if not head.startswith(b"\x80"):
            raise ValueError(f"{path}: expected {EXPECTED}; found {_describe_head(head)}")
        file.seek(0)
        return _unpickle(file, path, unpickler or RestrictedUnpickler)


def _unpickle(file: BinaryIO, path: pathlib.Path, unpickler: type[RestrictedUnpickler]) -> Any:
    try:
        return unpickler(file).load()
    except UnsafePickleError as error:
        raise UnsafePickleError(f"{path}: {error}") from None
    except Exception as error:  # truncated or corrupt data surfaces as many exception types
        raise ValueError(f"{path}: expected {EXPECTED}; found a corrupt or truncated pickle "
                         f"({type(error).__name__}: {error})") from error


def state_dict_from_record(record: ModuleRecord, prefix: str = "") -> dict[str, torch.Tensor]:
    """Flatten a record tree like `nn.Module.state_dict()`.

    Per module: `_parameters` then `_buffers` (skipping None and `_non_persistent_buffers_set`), then the
    children in `_modules` order under `prefix + name + '.'`.
    """
    state_dict: dict[str, torch.Tensor] = {}
    _flatten_into(record, prefix, state_dict)
    return state_dict


def _flatten_into(record: ModuleRecord, prefix: str, out: dict[str, torch.Tensor]) -> None:
    state = record.state
    non_persistent = set(state.get("_non_persistent_buffers_set", ()))
    tensors = [*state.get("_parameters", {}).items(),
               *[(name, buffer) for name, buffer in state.get("_buffers", {}).items() if name not in non_persistent]]
    for name, tensor in tensors:
        if tensor is None:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{prefix}{name}: expected a tensor; found {type(tensor).__name__}")
        out[prefix + name] = tensor.detach()
    for name, child in state.get("_modules", {}).items():
        if child is None:
            continue
        if not isinstance(child, ModuleRecord):
            raise ValueError(f"{prefix}{name}: expected a module record; found {type(child).__name__}")
        _flatten_into(child, f"{prefix}{name}.", out)


def to_plain(value: Any) -> Any:
    """Numpy scalars -> Python, numeric arrays -> torch tensors, records -> dicts, containers recursively."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy()) if value.dtype.kind in "biufc" else to_plain(value.tolist())
    if isinstance(value, np.dtype):
        return str(value)
    if isinstance(value, ModuleRecord):
        return describe_record(value)
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, dict):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_plain(item) for item in value)
    return value


def describe_record(record: ModuleRecord | None) -> dict | None:
    """Class name and public attributes of a record (module internals and `_init_*` dropped)."""
    if record is None:
        return None
    public = {key: to_plain(value) for key, value in record.state.items()
              if not key.startswith("_") and key != "training"}
    return {"class_name": record.class_name, **public}


# ----------------------------------------------------------------------------------------------------
# Official checkpoints -> our network.

def _network_record(top: Any, path: pathlib.Path) -> ModuleRecord:
    if isinstance(top, int) and top == LEGACY_TORCH_MAGIC:
        raise ValueError(f"{path}: expected {EXPECTED}; found a legacy (non-zip) torch.save file")
    if not isinstance(top, dict):
        raise ValueError(f"{path}: expected {EXPECTED}; found a top-level {type(top).__name__}")
    if "ema" not in top:
        raise ValueError(f"{path}: expected {EXPECTED}; found top-level keys {sorted(map(str, top))}")
    ema = top["ema"]
    if not isinstance(ema, ModuleRecord) or ema.version is None:
        raise ValueError(f"{path}: expected 'ema' to be a persistent network object; found {ema!r:.200}")
    return ema


def official_init_kwargs(record: ModuleRecord) -> dict[str, Any]:
    """Constructor arguments of a persistent object: `_init_kwargs` plus named positional `_init_args`."""
    kwargs = to_plain(dict(record.state.get("_init_kwargs", {})))
    args = tuple(record.state.get("_init_args", ()))
    if len(args) > len(POSITIONAL_ARGUMENTS):
        raise ValueError(f"{record.class_name}: expected at most {len(POSITIONAL_ARGUMENTS)} positional "
                         f"constructor arguments {POSITIONAL_ARGUMENTS}; found {len(args)}")
    for name, value in zip(POSITIONAL_ARGUMENTS, args):
        if name in kwargs:
            raise ValueError(f"{record.class_name}: {name!r} given both positionally and by keyword")
        kwargs[name] = to_plain(value)
    return kwargs


def _check_attributes(net: nn.Module, record: ModuleRecord) -> None:
    """Recorded plain attributes (sigma_data, sigma_max, ...) must equal those of the rebuilt network."""
    for name in CHECKED_ATTRIBUTES:
        if name not in record.state or not hasattr(net, name):
            continue
        stored, ours = to_plain(record.state[name]), getattr(net, name)
        if isinstance(ours, torch.Tensor) or not isinstance(stored, (int, float)):
            continue
        if not math.isclose(float(stored), float(ours), rel_tol=1e-6):
            raise ValueError(f"{record.class_name}.{name}: checkpoint has {stored}, rebuilt network has {ours}")


def _check_keys(net: nn.Module, state_dict: dict[str, torch.Tensor], class_name: str) -> None:
    expected = net.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    if missing or unexpected:
        raise ValueError(f"{class_name}: checkpoint keys do not match our {type(net).__name__}: "
                         f"missing {len(missing)} {missing[:10]}, unexpected {len(unexpected)} {unexpected[:10]}")
    wrong = [f"{key}: checkpoint {list(state_dict[key].shape)} vs ours {list(tensor.shape)}"
             for key, tensor in expected.items() if state_dict[key].shape != tensor.shape]
    if wrong:
        raise ValueError(f"{class_name}: {len(wrong)} shape mismatches: {wrong[:10]}")


def network_from_record(record: ModuleRecord) -> nn.Module:
    """Rebuild a Precond record in our classes, load its tensors strictly; float32, eval, no grad.

    EDM2 stores float16 weights: they are copied into float32 parameters, which is exact (fp16 ⊂ fp32),
    so CPU inference runs in float32 on the stored values.
    """
    init_kwargs = official_init_kwargs(record)
    try:
        net = network_from_official(record.class_name, init_kwargs)
    except (TypeError, ValueError) as error:
        raise ValueError(f"could not rebuild {record.class_name} from init_kwargs {init_kwargs}: {error}") from error
    _check_attributes(net, record)
    state_dict = state_dict_from_record(record)
    _check_keys(net, state_dict, record.class_name)
    net = net.float()
    net.load_state_dict(state_dict, strict=True)
    return net.eval().requires_grad_(False)


def load_official(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Load the EMA network of an official EDM (dict) or EDM2 (EasyDict) training pickle, without exec.

    Returns (net, extras). extras: class_name, init_kwargs, module_src_sha256, stored_dtypes, and the
    other top-level entries as plain values: loss (class_name, P_mean, P_std, sigma_data, ...), augment
    (or None), dataset_kwargs, encoder (EDM2; numpy arrays become tensors; None for EDM).
    """
    path = pathlib.Path(path)
    top = read_official_pickle(path)
    record = _network_record(top, path)
    net = network_from_record(record)
    stored = state_dict_from_record(record)
    extras = {
        "class_name": record.class_name,
        "init_kwargs": official_init_kwargs(record),
        "module_src_sha256": record.module_src_sha256,
        "stored_dtypes": sorted({str(t.dtype).removeprefix("torch.") for t in stored.values()}),
        "loss": to_plain(top.get("loss_fn")),
        "augment": to_plain(top.get("augment_pipe")),
        "dataset_kwargs": to_plain(dict(top.get("dataset_kwargs") or {})),
        "encoder": to_plain(top.get("encoder")),
    }
    logger.info("loaded %s (%s, %d tensors) from %s", record.class_name, extras["stored_dtypes"], len(stored), path)
    return net, extras
