"""EDM network primitives (Karras et al. 2022; layer layout of NVlabs/edm `training/networks.py`).

Attribute names (`weight`, `bias`, `resample_filter`, `freqs`, and the UNetBlock children
`norm0 conv0 affine norm1 conv1 skip norm2 qkv proj`) reproduce the official state_dict keys, so an
official checkpoint loads with `load_state_dict(strict=True)`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import einops
import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass(frozen=True)
class WeightInit:
    """How a layer draws its initial weight and bias (bias uses the weight's fans, scaled by `bias`)."""

    mode: str = "kaiming_normal"  # xavier_uniform | xavier_normal | kaiming_uniform | kaiming_normal
    weight: float = 1.0  # multiplier on the weight draw
    bias: float = 0.0  # multiplier on the bias draw (0 gives a zero bias)


def init_tensor(shape: Sequence[int], init: WeightInit, fan_in: int, fan_out: int) -> torch.Tensor:
    """Draw a tensor of `shape` with the variance rule named by `init.mode` (Glorot / He)."""
    if init.mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if init.mode == "xavier_normal":
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if init.mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if init.mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f"unknown init mode {init.mode!r}; expected one of "
                     "'xavier_uniform', 'xavier_normal', 'kaiming_uniform', 'kaiming_normal'")


class Linear(nn.Module):
    """Fully connected layer y = x Wᵀ + b; `weight: [out, in]`, `bias: [out]`."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 init: WeightInit = WeightInit()):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        fans = dict(fan_in=in_features, fan_out=out_features)
        self.weight = nn.Parameter(init_tensor([out_features, in_features], init, **fans) * init.weight)
        self.bias = nn.Parameter(init_tensor([out_features], init, **fans) * init.bias) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, in] -> [B, out], computed in x's dtype."""
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.weight.to(x.dtype), bias)


def resample_kernel(taps: Sequence[float]) -> torch.Tensor:
    """Separable FIR resampling filter f = r rᵀ / (Σr)², returned as [1, 1, F, F]."""
    r = torch.as_tensor(taps, dtype=torch.float32)
    f = torch.outer(r, r) / r.sum().square()  # [F, F]
    return f[None, None]


class Conv2d(nn.Module):
    """2-D convolution with optional 2x up/down FIR resampling (EDM `Conv2d`).

    kernel 0 gives a pure resampler without weight or bias. The buffer `resample_filter` exists only
    when up or down is set. Order: up/down resample, then the k x k convolution (padding k//2), unless
    `fused_resample`, which folds the padding of both into one pass (down: conv then strided filter).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True,
                 up: bool = False, down: bool = False, resample_filter: Sequence[float] = (1, 1),
                 fused_resample: bool = False, init: WeightInit = WeightInit()):
        super().__init__()
        if up and down:
            raise ValueError("Conv2d: up and down are exclusive; found both True")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        fans = dict(fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        shape = [out_channels, in_channels, kernel, kernel]
        self.weight = nn.Parameter(init_tensor(shape, init, **fans) * init.weight) if kernel else None
        self.bias = (nn.Parameter(init_tensor([out_channels], init, **fans) * init.bias)
                     if kernel and bias else None)
        self.register_buffer("resample_filter", resample_kernel(resample_filter) if up or down else None)

    def _filter(self, channels: int, gain: float) -> torch.Tensor:
        """Depthwise copy of the resample filter: [channels, 1, F, F]."""
        return (self.resample_filter * gain).tile([channels, 1, 1, 1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, in, H, W] -> [B, out, H', W'] with H' = 2H (up), H/2 (down) or H."""
        w = self.weight.to(x.dtype) if self.weight is not None else None
        b = self.bias.to(x.dtype) if self.bias is not None else None
        f = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0

        if self.fused_resample and self.up and w is not None:
            x = F.conv_transpose2d(x, self._filter(self.in_channels, 4).to(x.dtype), groups=self.in_channels,
                                   stride=2, padding=max(f_pad - w_pad, 0))
            x = F.conv2d(x, w, padding=max(w_pad - f_pad, 0))
        elif self.fused_resample and self.down and w is not None:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = F.conv2d(x, self._filter(self.out_channels, 1).to(x.dtype), groups=self.out_channels, stride=2)
        else:
            if self.up:
                x = F.conv_transpose2d(x, self._filter(self.in_channels, 4).to(x.dtype), groups=self.in_channels,
                                       stride=2, padding=f_pad)
            if self.down:
                x = F.conv2d(x, self._filter(self.in_channels, 1).to(x.dtype), groups=self.in_channels,
                             stride=2, padding=f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        if b is not None:
            x = x + b.reshape(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    """Group normalisation with groups = min(num_groups, C // min_channels_per_group)."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4,
                 eps: float = 1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] -> [B, C, H, W]."""
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


class PositionalEmbedding(nn.Module):
    """Transformer sinusoidal embedding of a scalar noise label (DDPM++ / ADM), output [cos, sin]."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B] -> [B, num_channels]; freqs_j = (1/max_positions)^(j / (C/2 - endpoint))."""
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=x.device) / (half - int(self.endpoint))
        freqs = (1 / self.max_positions) ** freqs  # [C/2]
        angles = torch.outer(x, freqs.to(x.dtype))  # [B, C/2]
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features of a scalar noise label (NCSN++); buffer `freqs` ~ N(0, scale²)."""

    def __init__(self, num_channels: int, scale: float = 16):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B] -> [B, num_channels] = [cos(2π f x), sin(2π f x)]."""
        angles = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))  # [B, C/2]
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class UNetBlock(nn.Module):
    """Residual UNet block with noise-embedding conditioning and optional self-attention (EDM `UNetBlock`).

    Children, in state_dict order: norm0 conv0 affine norm1 conv1 [skip] [norm2 qkv proj].
    """

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, *,
                 up: bool = False,                       # 2x nearest/FIR upsampling in conv0 and skip
                 down: bool = False,                     # 2x FIR downsampling in conv0 and skip
                 attention: bool = False,                # self-attention after the residual branch
                 num_heads: int | None = None,           # None: out_channels // channels_per_head
                 channels_per_head: int = 64,
                 dropout: float = 0.0,
                 skip_scale: float = 1.0,                # residual sums are multiplied by this
                 eps: float = 1e-5,                      # GroupNorm epsilon
                 resample_filter: Sequence[float] = (1, 1),
                 resample_proj: bool = False,            # 1x1 conv on a resampling skip path
                 adaptive_scale: bool = True,            # emb gives (scale, shift) instead of a bias
                 init: WeightInit = WeightInit(),
                 init_zero: WeightInit = WeightInit(weight=0.0),
                 init_attn: WeightInit | None = None):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_heads = 0 if not attention else (
            num_heads if num_heads is not None else out_channels // channels_per_head)
        self.dropout = dropout
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale
        resample = dict(up=up, down=down, resample_filter=resample_filter)

        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, init=init, **resample)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), init=init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3, init=init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel, init=init, **resample)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1, init=init_attn or init)
            self.proj = Conv2d(out_channels, out_channels, 1, init=init_zero)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x: [B, in, H, W], emb: [B or 1, emb_channels] -> [B, out, H', W']."""
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(x.dtype)  # [B, out or 2*out, 1, 1]
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            x = F.silu(torch.addcmul(shift, self.norm1(x), scale + 1))  # shift + norm1(x)·(scale + 1)
        else:
            x = F.silu(self.norm1(x + params))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = (x + (self.skip(orig) if self.skip is not None else orig)) * self.skip_scale
        if self.num_heads:
            x = (self.proj(self._attention(self.norm2(x))) + x) * self.skip_scale
        return x

    def _attention(self, h: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention over pixels; qkv channels are interleaved as (head, channel, 3)."""
        batch, channels, height, width = h.shape
        qkv = einops.rearrange(self.qkv(h), "b (heads c three) y x -> three (b heads) c (y x)",
                               heads=self.num_heads, three=3)
        q, k, v = qkv.unbind(0)  # each [B*heads, C/heads, HW]
        k = k / math.sqrt(k.shape[1])
        w = torch.einsum("ncq,nck->nqk", q.float(), k.float()).softmax(dim=2).to(q.dtype)  # [B*heads, HW, HW]
        a = torch.einsum("nqk,nck->ncq", w, v)  # [B*heads, C/heads, HW]
        return einops.rearrange(a, "(b heads) c (y x) -> b (heads c) y x", b=batch, y=height, x=width)
