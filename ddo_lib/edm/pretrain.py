"""Maximum-likelihood pretraining of a small EDM reference model (Karras et al. 2022, Sec. 5).

The reference p_ref that DDO finetunes. On the default CPU profile it is a small class-conditional
EDMPrecond + SongUNet trained on scikit-learn digits; at GPU scale it is an official checkpoint and
this module is not used. Training is resumable bit-identically: every random draw of step k comes
from a generator seeded by (seed, k), and the data order is a pure function of (seed, step).
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import pathlib

import torch
from tqdm.auto import tqdm

from ddo_lib import checkpoint as checkpoint_lib
from ddo_lib import data as data_lib
from ddo_lib.config import ReferenceConfig
from ddo_lib.edm.family import EDMFamily
from ddo_lib.launch import autocast
from ddo_lib.optim import ema_beta, make_ema, optimizer_step, scheduled_lr, update_ema
from ddo_lib.seeds import STREAM_PRETRAIN, step_generator

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainState:
    """Everything a resumed run needs. Saved atomically as plain tensors and Python values."""

    net: torch.nn.Module
    ema: torch.nn.Module
    optimizer: torch.optim.Optimizer
    step: int = 0
    history: list[dict] = dataclasses.field(default_factory=list)

    def payload(self, config: dict) -> dict:
        return dict(net=self.net.state_dict(), ema=self.ema.state_dict(),
                    optimizer=self.optimizer.state_dict(), step=self.step,
                    history=self.history, config=config)

    def restore(self, payload: dict) -> None:
        self.net.load_state_dict(payload["net"])
        self.ema.load_state_dict(payload["ema"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.step, self.history = int(payload["step"]), list(payload["history"])


def mle_step(net, images, labels, cfg: ReferenceConfig, step: int, label_dim: int, *,
             precision: str = "fp32") -> torch.Tensor:
    """EDM loss of one minibatch: sum over pixels, mean over rows (EDM `training_loop`), on net's device.

    Data order, σ and noise are drawn on the CPU from (seed, step), so every device sees the same draws."""
    device = next(net.parameters()).device
    index = data_lib.batch_indices(len(images), cfg.batch_size, cfg.seed, step)
    x = data_lib.to_float(images[index])                                     # [B, C, H, W]
    class_labels = data_lib.one_hot(labels[index], label_dim).to(device) if label_dim else None
    family = EDMFamily(P_mean=cfg.P_mean, P_std=cfg.P_std)
    draws = {k: v.to(device) for k, v in family.draw(step_generator(cfg.seed, step, STREAM_PRETRAIN), x).items()}
    with autocast(device, precision):
        loss = family.mle_loss(net, x.to(device), class_labels, draws)
    return loss.float().mean()


def pretrain(net: torch.nn.Module, dataset: "data_lib.Dataset", cfg: ReferenceConfig, *,
             checkpoint_path: str | pathlib.Path | None = None, checkpoint_every: int = 500,
             progress: bool = True, precision: str = "fp32") -> TrainState:
    """Train `net` (on its device) with the EDM loss for `cfg.steps` steps; resume from `checkpoint_path`
    if present. `precision`: 'fp32' or 'bf16' autocast of the forwards (`ddo_lib.launch`).

    Returns the final TrainState (EMA weights in `state.ema`). `state.history` holds one dict per
    logged step: step, loss (mean over the last `log_every` steps), lr.
    """
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
    state = TrainState(net=net, ema=make_ema(net), optimizer=optimizer)
    data_hash = hashlib.sha256(dataset.images.numpy().tobytes() + dataset.labels.numpy().tobytes()).hexdigest()
    config = dict(dataclasses.asdict(cfg), data=data_hash)  # a saved state resumes only for the same run
    path = pathlib.Path(checkpoint_path) if checkpoint_path else None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    if path is not None and path.exists():
        saved = checkpoint_lib.load_checkpoint(path)
        if saved.get("config") == config:
            state.restore(saved)
            log.info("resumed pretraining from %s at step %d", path, state.step)
        else:
            log.warning("ignoring %s: it was written for another configuration", path)
    beta = ema_beta(cfg.batch_size, cfg.ema_halflife_images)
    running = []
    net.train()
    for step in tqdm(range(state.step, cfg.steps), initial=state.step, total=cfg.steps,
                     disable=not progress, desc="pretrain"):
        loss = mle_step(net, dataset.images, dataset.labels, cfg, step, dataset.label_dim, precision=precision)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"pretraining loss is {loss.item()} at step {step}; "
                                     f"last good checkpoint kept at {path}")
        optimizer_step(net, optimizer, loss,
                       scheduled_lr(cfg.lr, step, cfg.steps, cfg.lr_warmup_steps, cfg.lr_schedule))
        update_ema(state.ema, net, beta)
        state.step = step + 1
        running.append(loss.item())
        if state.step % cfg.log_every == 0 or state.step == cfg.steps:
            state.history.append(dict(step=state.step, loss=sum(running) / len(running),
                                      lr=optimizer.param_groups[0]["lr"]))
            running = []
        if path is not None and (state.step % checkpoint_every == 0 or state.step == cfg.steps):
            checkpoint_lib.save_checkpoint(path, state.payload(config))
    net.eval()
    return state
