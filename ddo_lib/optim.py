"""Optimisation helpers shared by pretraining, DDO rounds, VAR and the guidance baseline.

Learning-rate schedules (EDM `lr_rampup`; cosine: Loshchilov & Hutter 2017), one optimizer step with EDM's
gradient sanitising, and an exponential moving average of weights with a half-life in images (Karras et
al. 2022, App. F.3).
"""
from __future__ import annotations

import copy
import math

import torch

SCHEDULES = ("constant", "cosine")


def warmup_lr(lr: float, step: int, warmup_steps: int) -> float:
    """Linear learning-rate warm-up (EDM `lr_rampup`, counted in steps here)."""
    return lr * min((step + 1) / max(warmup_steps, 1), 1.0)


def scheduled_lr(lr: float, step: int, total: int, warmup_steps: int, schedule: str = "constant", *,
                 floor: float = 0.0) -> float:
    """Linear warm-up, then constant (EDM) or half-cosine decay from lr to floor·lr at `total`."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; known: {list(SCHEDULES)}")
    if schedule == "constant" or step < warmup_steps:
        return warmup_lr(lr, step, warmup_steps)
    progress = (step - warmup_steps) / max(total - warmup_steps, 1)
    return lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


def optimizer_step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, lr: float) -> None:
    """One step at learning rate `lr` with EDM's gradient sanitising (NaN → 0, ±inf → ±1e5)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    apply_gradients(net, optimizer, lr)


def apply_gradients(net: torch.nn.Module, optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The update from the gradients already accumulated in `net`, sanitised as in `optimizer_step`."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    for p in net.parameters():
        if p.grad is not None:
            torch.nan_to_num(p.grad, nan=0.0, posinf=1e5, neginf=-1e5, out=p.grad)
    optimizer.step()


def ema_beta(batch_size: int, halflife_images: float) -> float:
    """Per-step decay beta = 0.5 ** (batch / halflife), so weights halve every `halflife_images`."""
    if batch_size <= 0 or halflife_images < 0:
        raise ValueError(f"ema_beta: need batch_size > 0 and halflife >= 0, found {batch_size}, {halflife_images}")
    return 0.5 ** (batch_size / max(halflife_images, 1e-8))


def make_ema(net: torch.nn.Module) -> torch.nn.Module:
    """A frozen eval-mode copy of `net` that will track its parameters."""
    ema = copy.deepcopy(net).eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: torch.nn.Module, net: torch.nn.Module, beta: float) -> None:
    """p_ema <- beta * p_ema + (1 - beta) * p for parameters; buffers are copied (EDM convention)."""
    for p_ema, p in zip(ema.parameters(), net.parameters(), strict=True):
        p_ema.lerp_(p.detach().to(p_ema.dtype), 1.0 - beta)
    for b_ema, b in zip(ema.buffers(), net.buffers(), strict=True):
        b_ema.copy_(b)
