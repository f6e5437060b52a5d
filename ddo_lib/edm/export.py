"""Hand a network back to the official tools: an EDM/EDM2 pickle, or plain safetensors weights.

`export_official(net, template_pkl, out_pkl)` rewrites an official training pickle (the one the
reference was loaded from) with our tensors. Everything else in the template is written back as read:
the network's class, constructor arguments and embedded source (`torch_utils.persistence`), the loss,
augmentation and dataset settings, EDM2's encoder. NVlabs/edm `generate.py` / `fid.py` and NVlabs/edm2
`generate_images.py` then load the result unchanged (`pickle.load(f)['ema']`). Each tensor keeps the
template's dtype, so an EDM2 export is float16 as released.

The template is read with the same allow-list as `ddo_lib.edm.checkpoint` (nothing is imported or
executed); the embedded source is carried as an opaque string. The output is written by a pure-Python
pickler that spells the official globals (`torch_utils.persistence._reconstruct_persistent_obj`,
`dnnlib.util.EasyDict`, torch containers) by name, so neither package needs to be importable here.
"""
from __future__ import annotations

import io
import os
import pathlib
import pickle
from typing import Any

import torch
from torch import nn

from ddo_lib.checkpoint import atomic_write_bytes
from ddo_lib.edm.checkpoint import (
    ModuleRecord,
    RestrictedUnpickler,
    _network_record,
    read_official_pickle,
    state_dict_from_record,
)

PERSISTENCE = ("torch_utils.persistence", "_reconstruct_persistent_obj")
EASYDICT = ("dnnlib.util", "EasyDict")
CONTAINER_MODULE = "torch.nn.modules.container"


class _Global:
    """A global written by name (module, qualname) without importing it; never called here."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self.module}.{self.name} is a name in an exported pickle, not callable here")


class PersistentTemplate(ModuleRecord):
    """A persistent object of the template with its whole `meta` (embedded source included)."""

    def __init__(self, meta: dict):
        super().__init__(meta["class_name"], meta["state"], version=meta.get("version"))
        self.meta = meta


class EasyDictTemplate(dict):
    """`dnnlib.util.EasyDict` of the template (written back under that name)."""


def _persistent_template(meta: Any) -> PersistentTemplate:
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict) \
            or not isinstance(meta.get("class_name"), str) or not isinstance(meta.get("module_src"), str):
        raise pickle.UnpicklingError(f"persistent object meta must be a dict with type 'class', str class_name "
                                     f"and module_src and a dict state; found {meta!r:.200}")
    return PersistentTemplate(meta)


class TemplateUnpickler(RestrictedUnpickler):
    """`RestrictedUnpickler` that keeps what an export needs to write back: full persistent metas and
    EasyDict types (the allow-list is the same)."""

    def __init__(self, file):
        super().__init__(file)
        self._allowed[PERSISTENCE] = _persistent_template
        self._allowed[EASYDICT] = EasyDictTemplate


class _OfficialPickler(pickle._Pickler):
    """Pure-Python pickler that writes `_Global`s, persistent objects, containers and EasyDicts as the
    official writer does (protocol 4); tensors, parameters and numpy arrays pickle as usual."""

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, _Global):
            self.save(obj.module)
            self.save(obj.name)
            self.write(pickle.STACK_GLOBAL)
            return
        if isinstance(obj, PersistentTemplate):
            return self._save_once(obj, lambda: self.save_reduce(_Global(*PERSISTENCE), (obj.meta,), obj=obj))
        if isinstance(obj, ModuleRecord):  # a container record (ModuleDict, ModuleList, Sequential)
            return self._save_once(obj, lambda: self._save_new(_Global(CONTAINER_MODULE, obj.class_name), obj,
                                                               lambda: (self.save(obj.state),
                                                                        self.write(pickle.BUILD))))
        if isinstance(obj, EasyDictTemplate):
            return self._save_once(obj, lambda: self._save_new(_Global(*EASYDICT), obj,
                                                               lambda: self._batch_setitems(iter(obj.items()))))
        return super().save(obj, save_persistent_id)

    def _save_once(self, obj, write) -> None:
        memo = self.memo.get(id(obj))
        if memo is not None:
            self.write(self.get(memo[0]))
            return
        write()

    def _save_new(self, cls: _Global, obj, fill) -> None:
        """NEWOBJ of `cls` with no arguments, memoised, then `fill()` (BUILD or SETITEMS)."""
        self.save(cls)
        self.write(pickle.EMPTY_TUPLE + pickle.NEWOBJ)
        self.memoize(obj)
        fill()


def read_template(path: str | os.PathLike) -> dict:
    """Read an official EDM/EDM2 training pickle for export (allow-listed globals only, nothing executed)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"export template not found: {path}")
    top = read_official_pickle(path, TemplateUnpickler)
    _network_record(top, path)
    if not isinstance(top["ema"], PersistentTemplate):
        raise ValueError(f"{path}: 'ema' is not a persistent network object")
    return top


def _check_compatible(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], template) -> None:
    missing = [key for key in theirs if key not in ours]
    unexpected = [key for key in ours if key not in theirs]
    if missing or unexpected:
        raise ValueError(f"{template}: the network does not match the template's "
                         f"{len(theirs)} tensors: missing {len(missing)} {missing[:10]}, "
                         f"unexpected {len(unexpected)} {unexpected[:10]}")
    wrong = [f"{key}: ours {list(ours[key].shape)} vs template {list(tensor.shape)}"
             for key, tensor in theirs.items() if ours[key].shape != tensor.shape]
    if wrong:
        raise ValueError(f"{template}: {len(wrong)} shape mismatches: {wrong[:10]}")
    bad = [key for key, tensor in ours.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise ValueError(f"refusing to export non-finite weights: {bad[:10]}")


def _assign(record: ModuleRecord, prefix: str, tensors: dict[str, torch.Tensor]) -> None:
    """Replace every tensor of the record tree (the `state_dict_from_record` order) with ours, cast to the
    template's dtype; parameters stay parameters with their requires_grad."""
    state = record.state
    non_persistent = set(state.get("_non_persistent_buffers_set", ()))
    for table in ("_parameters", "_buffers"):
        entries = state.get(table, {})
        for name, old in list(entries.items()):
            if old is None or (table == "_buffers" and name in non_persistent):
                continue
            new = tensors[prefix + name].detach().to(old.device, old.dtype).clone().contiguous()
            entries[name] = nn.Parameter(new, old.requires_grad) if isinstance(old, nn.Parameter) else new
    for name, child in state.get("_modules", {}).items():
        if child is not None:
            _assign(child, f"{prefix}{name}.", tensors)


def export_official(net: nn.Module, template_pkl: str | os.PathLike, out_pkl: str | os.PathLike) -> pathlib.Path:
    """Write `out_pkl`: the official pickle `template_pkl` with its 'ema' network's tensors replaced by
    `net`'s (same keys and shapes required; each cast to the template's dtype). Atomic; returns the path.

    The result loads with `ddo_lib.edm.checkpoint.load_official` and with the official
    `pickle.load(f)['ema']` (NVlabs/edm, NVlabs/edm2) unchanged.
    """
    template_pkl = pathlib.Path(template_pkl)
    top = read_template(template_pkl)
    ours = {key: value.detach() for key, value in net.state_dict().items()}
    _check_compatible(ours, state_dict_from_record(top["ema"]), template_pkl)
    _assign(top["ema"], "", ours)
    buffer = io.BytesIO()
    _OfficialPickler(buffer, protocol=4).dump(top)
    return atomic_write_bytes(out_pkl, buffer.getvalue())


def export_safetensors(net: nn.Module, out_path: str | os.PathLike, metadata: dict[str, str] | None = None) -> pathlib.Path:
    """The network's state_dict as a `.safetensors` file (CPU, contiguous, dtypes kept); atomic."""
    from safetensors.torch import save as save_bytes

    tensors = {key: value.detach().cpu().contiguous() for key, value in net.state_dict().items()}
    metadata = {str(key): str(value) for key, value in (metadata or {}).items()}
    return atomic_write_bytes(out_path, save_bytes(tensors, metadata=metadata))


__all__ = ["export_official", "export_safetensors", "read_template"]
