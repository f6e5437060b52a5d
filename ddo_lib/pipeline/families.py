"""Family dispatch for the notebooks: configs, reference files and generator families by family name.

The notebooks take a `family` parameter and call only these functions, so one notebook (one DVC stage
template) serves every family:

| family | params section  | reference file format | generator family (`ddo_lib.family`)    |
|--------|-----------------|-----------------------|----------------------------------------|
| `edm`  | `reference`     | `ddo_lib.network/1`   | `EDMFamily` (EDM / EDM2 denoisers)     |
| `var`  | `var_reference` | `ddo_lib.var/1`       | `VARFamily` (next-scale AR + tokenizer) |
"""
from __future__ import annotations

import dataclasses
import hashlib
import pathlib

import torch

from ddo_lib import checkpoint as checkpoint_lib
from ddo_lib import data as data_lib
from ddo_lib.config import ReferenceConfig
from ddo_lib.edm import reference as edm_reference
from ddo_lib.edm.family import EDMFamily
from ddo_lib.pipeline import params, paths
from ddo_lib.reference import Reference
from ddo_lib.var import reference as var_reference

FAMILIES = params.FAMILIES
SECTIONS = {"edm": "reference", "var": "var_reference"}


def check_family(family: str) -> str:
    """`family` if it is one of FAMILIES, else a ValueError naming them."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {list(FAMILIES)}")
    return family


def reference_config(family: str, params_file, *, smoke: bool = False):
    """The frozen reference config of `family` from its params.yaml section (smoke-sized if asked)."""
    cls = ReferenceConfig if params.check_configured(params_file, check_family(family)) == "edm" \
        else var_reference.VARReferenceConfig
    cfg = params.load_section(cls, params_file, SECTIONS[family])
    for field in ("checkpoint", "vqvae"):  # official files named relative to the repository root
        if getattr(cfg, field, None):
            cfg = dataclasses.replace(cfg, **{field: str(paths.resolve(getattr(cfg, field)))})
    return cfg.smoke() if smoke else cfg


def build_reference(family: str, cfg, dataset, *, state_path: pathlib.Path | None = None,
                    progress: bool = True, device: torch.device | str = "cpu", precision: str = "fp32") -> Reference:
    """Pretrain (or, with `cfg.checkpoint`, load the official one) the reference of `family` on `dataset`; the
    result lives on `device`. The tiny digits VAR is pretrained on the CPU, then moved. An official reference
    has no training state: `state_path` (the stage's declared output) then records only where it came from."""
    if getattr(cfg, "checkpoint", None) is None and not isinstance(dataset.images, torch.Tensor):
        raise ValueError(f"{family} reference: pretraining here needs an in-memory data set (.npz, EDM zip, CIFAR-10); "
                         f"a streamed image folder ({dataset.name}) is for finetuning an official checkpoint "
                         f"(set the `checkpoint` of the family's params section)")
    if check_family(family) == "edm":
        built = edm_reference.build(cfg, dataset, state_path=state_path, progress=progress, device=device,
                                    precision=precision)
    elif cfg.checkpoint is not None:
        built = var_reference.load_official(cfg, label_dim=dataset.label_dim, resolution=dataset.resolution)
    else:
        built = _build_var(cfg, dataset, state_path=state_path, progress=progress)
    if cfg.checkpoint is not None and state_path is not None:
        pathlib.Path(state_path).parent.mkdir(parents=True, exist_ok=True)
        checkpoint_lib.save_checkpoint(state_path, dict(source="official", meta=dict(built.meta)))
    built.net.to(device)
    return built


def _build_var(cfg, dataset, *, state_path: pathlib.Path | None, progress: bool) -> Reference:
    """The VAR reference, reused from `state_path` when that file was written for the same config and data
    (VAR pretraining takes minutes and is not resumable mid-way; a finished run is not redone)."""
    key = dict(config=_plain_config(cfg), data=_data_digest(dataset))
    if state_path is not None and pathlib.Path(state_path).exists():
        saved = var_reference.load(state_path)
        if saved.meta.get("key") == key:  # the same reference a fresh build returns: history back, key off
            meta = {k: v for k, v in saved.meta.items() if k not in ("key", "history")}
            return dataclasses.replace(saved, meta=meta, history=list(saved.meta.get("history", [])))
    built = var_reference.build(cfg, dataset, progress=progress)
    if state_path is not None:
        var_reference.save(state_path, dataclasses.replace(built, meta=dict(built.meta, key=key,
                                                                            history=built.history)))
    return built


OFFICIAL_FIELDS = ("checkpoint", "vqvae", "checkpoint_depth")  # unset for a pretrained reference: not in its key


def _plain_config(cfg) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()
            if not (k in OFFICIAL_FIELDS and v is None)}


def _data_digest(dataset) -> str:
    digest = hashlib.sha256(dataset.images.numpy().tobytes())
    digest.update(dataset.labels.numpy().tobytes())
    return digest.hexdigest()


def family_name(reference: Reference) -> str:
    """'var' for a VAR reference, else 'edm'."""
    return "var" if reference.class_name == "VAR" else "edm"


def save_reference(path, reference: Reference) -> pathlib.Path:
    """Write `reference` atomically in its family's own format."""
    if family_name(reference) == "var":
        return var_reference.save(path, reference)
    return edm_reference.save(path, reference)


def load_reference(path, device: torch.device | str = "cpu") -> Reference:
    """Read a reference of any family (format tag decides); weights_only, strict keys, frozen, on `device`."""
    reference = _load_reference(path)
    reference.net.to(device)
    return reference


def _load_reference(path) -> Reference:
    payload = checkpoint_lib.load_checkpoint(path)
    found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
    if found == var_reference.FORMAT:
        return var_reference.from_payload(payload, path)
    if found == edm_reference.FORMAT:
        return edm_reference.from_payload(payload, path)
    raise ValueError(f"{path}: not a ddo_lib reference file (format {found!r}; expected "
                     f"{edm_reference.FORMAT!r} or {var_reference.FORMAT!r})")


THREADS = {"edm": 2, "var": 1}  # CPU threads per family on the 2-core default profile


def num_threads(family: str) -> int:
    """torch threads for a family's stage on CPU. The tiny VAR runs faster on 1 thread: its small
    matmuls pay oneDNN's multi-thread start-up per shape (the VAR reference: 135 s on 1 thread)."""
    return THREADS[check_family(family)]


def generator_family(reference: Reference, *, sample_steps: int = 18, batch_size: int = 256,
                     P_mean: float = -1.2, P_std: float = 1.2, var_cfg: float = 1.0, var_top_k: int = 0,
                     var_top_p: float = 0.0):
    """The generator family of `reference` (`ddo_lib.family`). EDM: σ ~ logN(P_mean, P_std²) for log-ratios and
    `sample_steps` Heun steps for sampling; VAR: its frozen tokenizer, sampling guidance `var_cfg` (official
    1.0; 0 = guidance-free) and top-k / top-p (0 = off); sample_steps / σ do not apply to VAR, var_* not to EDM."""
    if family_name(reference) == "var":
        return var_reference.family(reference, batch_size=batch_size, cfg=var_cfg, top_k=var_top_k, top_p=var_top_p)
    return EDMFamily(P_mean=P_mean, P_std=P_std, num_steps=sample_steps, batch_size=batch_size,
                     sampler=edm_sampler_of(reference))


def edm_sampler_of(reference: Reference) -> str:
    """The sampler an EDM-family reference was released with: EDM2's `Precond` uses the EDM2 sampler
    (NVlabs/edm2 `generate_images.py`, deterministic Heun), every EDM preconditioner the EDM sampler."""
    return "edm2" if reference.class_name == "Precond" else "edm"


def preview(reference: Reference, label_dim: int, *, sample_steps: int = 18, rows: int = 10,
            max_columns: int = 10) -> torch.Tensor:
    """uint8 samples for a grid: `rows` per class, one class per column (unconditional: rows × 10 images);
    with more than `max_columns` classes, that many evenly spaced ones (ImageNet: 0, 100, …, 900)."""
    columns = min(max(label_dim, 1), max_columns)
    classes = data_lib.class_balanced_labels(rows * columns, columns) * max(label_dim // columns, 1)
    labels = classes if label_dim else None
    return generator_family(reference, sample_steps=sample_steps).sample(reference.net, range(rows * columns),
                                                                         labels)


def with_network(reference: Reference, net, **meta) -> Reference:
    """A copy of `reference` (same family, constructor arguments and tokenizer) carrying `net` and `meta`."""
    return dataclasses.replace(reference, net=net, history=[], meta=dict(meta))


def loss_key(history: list[dict]) -> str:
    """The training-loss column of a reference's history ('loss' for EDM, 'ce' for VAR)."""
    return "loss" if not history or "loss" in history[0] else "ce"


def reference_summary(reference: Reference, cfg, dataset) -> dict:
    """Flat metrics record of the reference stage; VAR adds its exact NLL on `dataset`."""
    last = reference.history[-1] if reference.history else {}
    record = dict(source=reference.meta.get("source", ""), steps=int(reference.meta.get("steps", 0)),
                  final_loss=last.get("loss"), num_parameters=reference.num_parameters,
                  family=family_name(reference))
    if getattr(cfg, "checkpoint", None) is None:  # trained here: its settings (an official file has none of ours)
        record.update(batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed)
    if reference.history:
        record["final_loss"] = reference.history[-1][loss_key(reference.history)]
    if family_name(reference) == "var":
        record.update(var_reference.negative_log_likelihood(reference, dataset))
    return record
