"""Exponential moving average of weights with a half-life in images (Karras et al. 2022, App. F.3)."""
from __future__ import annotations

import copy

import torch


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
