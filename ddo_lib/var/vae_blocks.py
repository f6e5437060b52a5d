"""Convolutional encoder and decoder of the VAR tokenizer (Tian et al. 2024; LDM vq-f16 layout).

The VAR VQVAE uses the Latent-Diffusion VQGAN backbone with one change: each attention block computes
q, k and v with a single fused 1×1 convolution `qkv` (3C outputs, in the order q, k, v). Module names
mirror FoundationVision/VAR `models/basic_vae.py` so that official state dicts load with `strict=True`:
`conv_in`, `down.{i}.block.{j}`, `down.{i}.attn.{j}`, `down.{i}.downsample.conv`, `mid.block_1`,
`mid.attn_1`, `mid.block_2`, `norm_out`, `conv_out` (encoder) and `up.{i}.…` / `up.{i}.upsample.conv`
(decoder, `up.0` is the highest resolution).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

GROUPS = 32  # GroupNorm groups: channel widths must be multiples of 32


def normalize(channels: int) -> nn.GroupNorm:
    """GroupNorm(32, C, eps=1e-6) with affine parameters."""
    if channels % GROUPS != 0:
        raise ValueError(f"GroupNorm with {GROUPS} groups needs a channel count divisible by {GROUPS}, "
                         f"found {channels}")
    return nn.GroupNorm(GROUPS, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """norm1 → SiLU → conv1 → norm2 → SiLU → dropout → conv2, plus a (1×1 conv if C changes) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = (nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels
                             else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention, softmax(q k^T / √C) v, with a fused qkv 1×1 conv and a residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = normalize(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)
        self.scale = channels ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        q, k, v = rearrange(self.qkv(self.norm(x)), "b (three c) h w -> three b (h w) c", three=3)  # [B, HW, C]
        weights = torch.bmm(q, k.transpose(1, 2)).mul(self.scale).softmax(dim=2)  # [B, HW_q, HW_k]
        h = torch.bmm(weights, v)  # [B, HW, C]
        return x + self.proj_out(rearrange(h, "b (h w) c -> b c h w", h=H, w=W))


class Downsample2x(nn.Module):
    """Zero-pad right/bottom by one pixel, then a stride-2 3×3 conv (no padding): H → H/2."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample2x(nn.Module):
    """Nearest-neighbour ×2, then a 3×3 conv: H → 2H."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def _attention(channels: int, enabled: bool) -> nn.Module:
    return AttnBlock(channels) if enabled else nn.Identity()


class MidBlock(nn.Module):
    """block_1 → attn_1 → block_2 at the lowest resolution."""

    def __init__(self, channels: int, dropout: float, using_mid_sa: bool):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = _attention(channels, using_mid_sa)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Level(nn.Module):
    """One resolution level: res blocks (each followed by attention where used), then an optional resampler."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, dropout: float, with_attention: bool):
        super().__init__()
        widths = [in_channels] + [out_channels] * num_blocks
        self.block = nn.ModuleList([ResnetBlock(a, b, dropout) for a, b in zip(widths[:-1], widths[1:])])
        self.attn = nn.ModuleList([AttnBlock(out_channels) for _ in range(num_blocks)] if with_attention else [])

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for j, block in enumerate(self.block):
            h = block(h)
            if len(self.attn) > 0:
                h = self.attn[j](h)
        return h


class Encoder(nn.Module):
    """Image [B, in_channels, H, W] → latent [B, z_channels, H/2^(n−1), W/2^(n−1)], n = len(ch_mult)."""

    def __init__(self, *,
                 ch: int = 128,                         # base width
                 ch_mult: Sequence[int] = (1, 2, 4, 8),  # width multiplier per level
                 num_res_blocks: int = 2,               # res blocks per level
                 dropout: float = 0.0,
                 in_channels: int = 3,
                 z_channels: int = 32,
                 double_z: bool = False,                # 2·z_channels outputs (unused by VAR)
                 using_sa: bool = True,                 # attention at the lowest-resolution level
                 using_mid_sa: bool = True):            # attention in the middle block
        super().__init__()
        widths = [ch * m for m in (1, *ch_mult)]
        last = len(ch_mult) - 1
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        for i in range(len(ch_mult)):
            level = Level(widths[i], widths[i + 1], num_res_blocks, dropout, using_sa and i == last)
            if i != last:
                level.downsample = Downsample2x(widths[i + 1])
            self.down.append(level)
        self.mid = MidBlock(widths[-1], dropout, using_mid_sa)
        self.norm_out = normalize(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], 2 * z_channels if double_z else z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # [B, ch, H, W]
        for level in self.down:
            h = level(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)  # [B, ch·ch_mult[-1], h, w]
        return self.conv_out(F.silu(self.norm_out(h)))  # [B, z_channels, h, w]


class Decoder(nn.Module):
    """Latent [B, z_channels, h, w] → image [B, in_channels, h·2^(n−1), w·2^(n−1)] (not clamped)."""

    def __init__(self, *,
                 ch: int = 128,
                 ch_mult: Sequence[int] = (1, 2, 4, 8),
                 num_res_blocks: int = 2,               # the decoder uses num_res_blocks + 1 per level
                 dropout: float = 0.0,
                 in_channels: int = 3,                  # image channels produced
                 z_channels: int = 32,
                 using_sa: bool = True,
                 using_mid_sa: bool = True):
        super().__init__()
        last = len(ch_mult) - 1
        widths = [ch * m for m in ch_mult]
        self.conv_in = nn.Conv2d(z_channels, widths[-1], 3, padding=1)
        self.mid = MidBlock(widths[-1], dropout, using_mid_sa)
        levels = {}
        for i in reversed(range(len(ch_mult))):  # built lowest resolution first, stored as up.0 = highest
            in_width = widths[i + 1] if i < last else widths[-1]
            level = Level(in_width, widths[i], num_res_blocks + 1, dropout, using_sa and i == last)
            if i != 0:
                level.upsample = Upsample2x(widths[i])
            levels[i] = level
        self.up = nn.ModuleList([levels[i] for i in range(len(ch_mult))])
        self.norm_out = normalize(widths[0])
        self.conv_out = nn.Conv2d(widths[0], in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))  # [B, ch·ch_mult[-1], h, w]
        for level in reversed(self.up):
            h = level(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # [B, in_channels, H, W]
