"""EDM UNet backbones F_theta: SongUNet (DDPM++/NCSN++) and DhariwalUNet (ADM) (Karras et al. 2022).

Module names (`map_*`, ModuleDicts `enc`/`dec` with keys like `16x16_block0`) and their insertion order
reproduce the official NVlabs/edm state_dict keys and key order.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ddo_lib.edm.layers import (
    Conv2d,
    FourierEmbedding,
    GroupNorm,
    Linear,
    PositionalEmbedding,
    UNetBlock,
    WeightInit,
)

EMBEDDING_TYPES = ("positional", "fourier")
ENCODER_TYPES = ("standard", "skip", "residual")
DECODER_TYPES = ("standard", "skip")


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}; found {value!r}")


def _run_encoder(enc: nn.ModuleDict, x: torch.Tensor, emb: torch.Tensor) -> list[torch.Tensor]:
    """Encoder pass shared by both UNets; returns the skip stack. `aux_*` modules act on the image path."""
    skips, aux = [], x
    for name, block in enc.items():
        if "aux_down" in name:
            aux = block(aux)
        elif "aux_skip" in name:
            x = skips[-1] = x + block(aux)
        elif "aux_residual" in name:
            x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
        else:
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
    return skips


class SongUNet(nn.Module):
    """DDPM++ / NCSN++ UNet of Song et al. 2021 as configured in EDM (Karras et al. 2022)."""

    def __init__(self, *,
                 img_resolution: int,                          # image side R
                 in_channels: int,                             # input image channels
                 out_channels: int,                            # output image channels
                 label_dim: int = 0,                           # class-label dimension, 0 = unconditional
                 augment_dim: int = 0,                         # augmentation-label dimension, 0 = none
                 model_channels: int = 128,                    # base channel count
                 channel_mult: Sequence[int] = (1, 2, 2, 2),   # per-resolution channel multipliers
                 channel_mult_emb: int = 4,                    # embedding width = model_channels * this
                 num_blocks: int = 4,                          # residual blocks per resolution
                 attn_resolutions: Sequence[int] = (16,),      # resolutions with self-attention
                 dropout: float = 0.10,                        # dropout inside residual blocks
                 label_dropout: float = 0.0,                   # train-time probability of zeroing a label row
                 embedding_type: str = "positional",           # 'positional' (DDPM++) | 'fourier' (NCSN++)
                 channel_mult_noise: int = 1,                  # noise embedding width = model_channels * this
                 encoder_type: str = "standard",               # 'standard' | 'skip' | 'residual' (NCSN++)
                 decoder_type: str = "standard",               # 'standard' | 'skip'
                 resample_filter: Sequence[float] = (1, 1)):   # FIR taps: [1,1] DDPM++, [1,3,3,1] NCSN++
        super().__init__()
        _check_choice("embedding_type", embedding_type, EMBEDDING_TYPES)
        _check_choice("encoder_type", encoder_type, ENCODER_TYPES)
        _check_choice("decoder_type", decoder_type, DECODER_TYPES)
        self.img_resolution = img_resolution
        self.label_dim = label_dim
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = WeightInit(mode="xavier_uniform")
        init_zero = WeightInit(mode="xavier_uniform", weight=1e-5)
        init_attn = WeightInit(mode="xavier_uniform", weight=math.sqrt(0.2))
        block_kwargs = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5),
                            eps=1e-6, resample_filter=resample_filter, resample_proj=True, adaptive_scale=False,
                            init=init, init_zero=init_zero, init_attn=init_attn)

        # Mapping network: noise label (+ class label, + augmentation label) -> emb.
        self.map_noise = (PositionalEmbedding(noise_channels, endpoint=True) if embedding_type == "positional"
                          else FourierEmbedding(noise_channels))
        self.map_label = Linear(label_dim, noise_channels, init=init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, init=init) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, init=init)
        self.map_layer1 = Linear(emb_channels, emb_channels, init=init)

        # Encoder.
        self.enc = nn.ModuleDict()
        out_ch = aux_ch = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(out_ch, model_channels, 3, init=init)
                out_ch = model_channels
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(out_ch, out_ch, down=True, **block_kwargs)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(aux_ch, aux_ch, 0, down=True,
                                                               resample_filter=resample_filter)
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(aux_ch, out_ch, 1, init=init)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(aux_ch, out_ch, 3, down=True,
                                                                   resample_filter=resample_filter,
                                                                   fused_resample=True, init=init)
                    aux_ch = out_ch
            for index in range(num_blocks):
                in_ch, out_ch = out_ch, model_channels * mult
                self.enc[f"{res}x{res}_block{index}"] = UNetBlock(
                    in_ch, out_ch, attention=res in attn_resolutions, **block_kwargs)
        skip_channels = [block.out_channels for name, block in self.enc.items() if "aux" not in name]

        # Decoder.
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(out_ch, out_ch, attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(out_ch, out_ch, **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(out_ch, out_ch, up=True, **block_kwargs)
            for index in range(num_blocks + 1):
                in_ch, out_ch = out_ch + skip_channels.pop(), model_channels * mult
                attention = index == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{index}"] = UNetBlock(in_ch, out_ch, attention=attention, **block_kwargs)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(out_channels, out_channels, 0, up=True,
                                                             resample_filter=resample_filter)
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(out_ch, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(out_ch, out_channels, 3, init=init_zero)

    def embed(self, noise_labels: torch.Tensor, class_labels: torch.Tensor | None,
              augment_labels: torch.Tensor | None) -> torch.Tensor:
        """Mapping network: noise_labels [B], class_labels [B or 1, L], augment_labels [B, A] -> emb [B, E]."""
        emb = self.map_noise(noise_labels)  # [B, noise] = [cos, sin]
        cos, sin = emb.chunk(2, dim=1)
        emb = torch.cat([sin, cos], dim=1)  # DDPM++/NCSN++ convention: [sin, cos]
        if self.map_label is not None:
            labels = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand([labels.shape[0], 1], device=labels.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer0(emb))
        return F.silu(self.map_layer1(emb))  # [B, E]

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None,
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, C_in, R, R], noise_labels: [B] (or [1]) -> F_x: [B, C_out, R, R] in x's dtype."""
        emb = self.embed(noise_labels, class_labels, augment_labels)
        skips = _run_encoder(self.enc, x, emb)
        x = skips[-1]
        aux = tmp = None
        for name, block in self.dec.items():
            if "aux_up" in name:
                aux = block(aux)
            elif "aux_norm" in name:
                tmp = block(x)
            elif "aux_conv" in name:
                tmp = block(F.silu(tmp))
                aux = tmp if aux is None else tmp + aux
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return aux


class DhariwalUNet(nn.Module):
    """ADM UNet of Dhariwal & Nichol 2021 as configured in EDM (Karras et al. 2022)."""

    def __init__(self, *,
                 img_resolution: int,                          # image side R
                 in_channels: int,                             # input image channels
                 out_channels: int,                            # output image channels
                 label_dim: int = 0,                           # class-label dimension, 0 = unconditional
                 augment_dim: int = 0,                         # augmentation-label dimension, 0 = none
                 model_channels: int = 192,                    # base channel count
                 channel_mult: Sequence[int] = (1, 2, 3, 4),   # per-resolution channel multipliers
                 channel_mult_emb: int = 4,                    # embedding width = model_channels * this
                 num_blocks: int = 3,                          # residual blocks per resolution
                 attn_resolutions: Sequence[int] = (32, 16, 8),  # resolutions with self-attention
                 dropout: float = 0.10,                        # dropout inside residual blocks
                 label_dropout: float = 0.0):                  # train-time probability of zeroing a label row
        super().__init__()
        self.img_resolution = img_resolution
        self.label_dim = label_dim
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        init = WeightInit(mode="kaiming_uniform", weight=math.sqrt(1 / 3), bias=math.sqrt(1 / 3))
        init_zero = WeightInit(mode="kaiming_uniform", weight=0.0, bias=0.0)
        block_kwargs = dict(emb_channels=emb_channels, channels_per_head=64, dropout=dropout,
                            init=init, init_zero=init_zero)

        # Mapping network.
        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = (Linear(augment_dim, model_channels, bias=False, init=init_zero)
                            if augment_dim else None)
        self.map_layer0 = Linear(model_channels, emb_channels, init=init)
        self.map_layer1 = Linear(emb_channels, emb_channels, init=init)
        self.map_label = (Linear(label_dim, emb_channels, bias=False,
                                 init=WeightInit(mode="kaiming_normal", weight=math.sqrt(label_dim)))
                          if label_dim else None)

        # Encoder.
        self.enc = nn.ModuleDict()
        out_ch = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(out_ch, model_channels * mult, 3, init=init)
                out_ch = model_channels * mult
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(out_ch, out_ch, down=True, **block_kwargs)
            for index in range(num_blocks):
                in_ch, out_ch = out_ch, model_channels * mult
                self.enc[f"{res}x{res}_block{index}"] = UNetBlock(
                    in_ch, out_ch, attention=res in attn_resolutions, **block_kwargs)
        skip_channels = [block.out_channels for block in self.enc.values()]

        # Decoder.
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(out_ch, out_ch, attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(out_ch, out_ch, **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(out_ch, out_ch, up=True, **block_kwargs)
            for index in range(num_blocks + 1):
                in_ch, out_ch = out_ch + skip_channels.pop(), model_channels * mult
                self.dec[f"{res}x{res}_block{index}"] = UNetBlock(
                    in_ch, out_ch, attention=res in attn_resolutions, **block_kwargs)
        self.out_norm = GroupNorm(out_ch)
        self.out_conv = Conv2d(out_ch, out_channels, 3, init=init_zero)

    def embed(self, noise_labels: torch.Tensor, class_labels: torch.Tensor | None,
              augment_labels: torch.Tensor | None) -> torch.Tensor:
        """Mapping network: noise_labels [B], class_labels [B or 1, L], augment_labels [B, A] -> emb [B, E]."""
        emb = self.map_noise(noise_labels)  # [B, C] = [cos, sin], no swap in ADM
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None:
            labels = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand([labels.shape[0], 1], device=labels.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels)  # unscaled labels, no bias
        return F.silu(emb)  # [B, E]

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None,
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, C_in, R, R], noise_labels: [B] (or [1]) -> F_x: [B, C_out, R, R] in x's dtype."""
        emb = self.embed(noise_labels, class_labels, augment_labels)
        skips = _run_encoder(self.enc, x, emb)
        x = skips[-1]
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))
