"""EDM reference models: pretrain a small EDM here, or load an official EDM/EDM2 pickle; our file format.

Either way the reference is saved as a `torch.save` dict of plain tensors and Python values, read back
with `weights_only=True`:

    {"format": FORMAT, "class_name": "EDMPrecond", "init_kwargs": {...}, "state_dict": {...}, "meta": {...}}
"""
from __future__ import annotations

import pathlib

import torch

from ddo_lib import checkpoint as checkpoint_lib
from ddo_lib.config import ReferenceConfig
from ddo_lib.edm import pretrain
from ddo_lib.edm.checkpoint import load_official
from ddo_lib.edm.precond import network_from_official
from ddo_lib.reference import Reference, plain

FORMAT = "ddo_lib.network/1"


def reference_init_kwargs(cfg: ReferenceConfig, *, resolution: int, channels: int, label_dim: int) -> dict:
    """EDMPrecond constructor arguments for the config's architecture and the dataset's shape."""
    kwargs = dict(img_resolution=resolution, img_channels=channels, label_dim=label_dim,
                  model_type=cfg.model_type, sigma_data=cfg.sigma_data,
                  model_channels=cfg.model_channels, channel_mult=list(cfg.channel_mult),
                  num_blocks=cfg.num_blocks, attn_resolutions=list(cfg.attn_resolutions),
                  dropout=cfg.dropout)
    if cfg.model_type == "SongUNet":
        kwargs.update(embedding_type="positional", encoder_type="standard", decoder_type="standard",
                      channel_mult_noise=1, resample_filter=[1, 1])
    return kwargs


def build(cfg: ReferenceConfig, dataset, *, state_path: pathlib.Path | None = None, progress: bool = True,
          device: torch.device | str = "cpu", precision: str = "fp32") -> Reference:
    """Load `cfg.checkpoint` if given, else pretrain a fresh EDM on `dataset` (resumable) on `device`.
    Weights are initialised on the CPU from `cfg.seed`, so every device starts from the same network."""
    if cfg.checkpoint:
        net, extras = load_official(cfg.checkpoint)
        return Reference(net=net.to(device), class_name=extras["class_name"], init_kwargs=plain(extras["init_kwargs"]),
                         meta=dict(source=str(cfg.checkpoint)))
    init_kwargs = reference_init_kwargs(cfg, resolution=dataset.resolution, channels=dataset.channels,
                                        label_dim=dataset.label_dim)
    torch.manual_seed(cfg.seed)  # weight initialisation belongs to the seed's contract
    net = network_from_official("EDMPrecond", init_kwargs).to(device)
    state = pretrain.pretrain(net, dataset, cfg, checkpoint_path=state_path, progress=progress, precision=precision)
    return Reference(net=state.ema, class_name="EDMPrecond", init_kwargs=init_kwargs,
                     history=state.history, meta=dict(source="pretrained", steps=state.step))


def save(path: str | pathlib.Path, reference: Reference) -> pathlib.Path:
    """Write the reference atomically in our own format."""
    payload = dict(format=FORMAT, class_name=reference.class_name, init_kwargs=plain(reference.init_kwargs),
                   state_dict={k: v.detach().cpu() for k, v in reference.net.state_dict().items()},
                   meta=plain(reference.meta))
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    checkpoint_lib.save_checkpoint(path, payload)
    return pathlib.Path(path)


def load(path: str | pathlib.Path) -> Reference:
    """Read a network saved by `save` (weights_only); strict key check; eval mode, frozen."""
    return from_payload(checkpoint_lib.load_checkpoint(path), path)


def from_payload(payload, path) -> Reference:
    """`load` of an already-read file's payload (`path` only names it in errors)."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path}: expected a ddo_lib network file (format {FORMAT!r}), found {found!r}")
    net = network_from_official(payload["class_name"], payload["init_kwargs"])
    net.load_state_dict(payload["state_dict"], strict=True)
    net.eval().requires_grad_(False)
    return Reference(net=net, class_name=payload["class_name"], init_kwargs=payload["init_kwargs"],
                     meta=payload.get("meta", {}))
