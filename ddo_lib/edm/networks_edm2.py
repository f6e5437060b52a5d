"""EDM2 magnitude-preserving UNet and its preconditioner (Karras et al. 2024, "Analyzing and Improving
the Training Dynamics of Diffusion Models", config G; NVlabs/edm2 `training/networks_edm2.py` layout).

Attribute names and registration order reproduce the official state_dict keys (`unet.enc.16x16_conv.weight`,
`unet.enc.8x8_block0.emb_gain`, `unet.out_gain`, `logvar_linear.weight`, ...), so an official EMA net
loads with `load_state_dict(strict=True)`. Official EMA nets are stored in float16 (buffers too); every
layer casts its weights to float32 before use, so on CPU the whole computation runs in float32 whatever
the stored dtype.
"""
from __future__ import annotations

import math
from typing import Sequence

import einops
import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------------------------------
# Magnitude-preserving primitives (Karras et al. 2024, Sec. 3 and App. B).


def normalize(x: torch.Tensor, dim: int | Sequence[int] | None = None, eps: float = 1e-4) -> torch.Tensor:
    """Scale `x` to unit RMS over `dim` (default: all dims but 0); the norm is taken in float32."""
    if dim is None:
        dim = list(range(1, x.ndim))
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    norm = torch.add(eps, norm, alpha=math.sqrt(norm.numel() / x.numel()))  # eps + RMS
    return x / norm.to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """Magnitude-preserving SiLU (Karras et al. 2024, Eq. 81): silu(x) / 0.596."""
    return F.silu(x) / 0.596


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """Magnitude-preserving sum (Karras et al. 2024, Eq. 88): lerp(a, b, t) / sqrt((1-t)^2 + t^2)."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t ** 2)


def mp_cat(a: torch.Tensor, b: torch.Tensor, dim: int = 1, t: float = 0.5) -> torch.Tensor:
    """Magnitude-preserving concatenation (Karras et al. 2024, Eq. 103) along `dim`, b weighted by t."""
    n_a, n_b = a.shape[dim], b.shape[dim]
    scale = math.sqrt((n_a + n_b) / ((1 - t) ** 2 + t ** 2))
    weight_a = scale / math.sqrt(n_a) * (1 - t)
    weight_b = scale / math.sqrt(n_b) * t
    return torch.cat([weight_a * a, weight_b * b], dim=dim)


def resample(x: torch.Tensor, f: Sequence[float] = (1, 1), mode: str = "keep") -> torch.Tensor:
    """Separable-filter resampling of x: [B, C, H, W] by 2 ('down' / 'up') or identity ('keep')."""
    if mode == "keep":
        return x
    if mode not in ("down", "up"):
        raise ValueError(f"resample mode must be 'keep', 'down' or 'up'; found {mode!r}")
    if len(f) % 2 != 0:
        raise ValueError(f"resample filter must have even length; found {len(f)}")
    f_1d = torch.as_tensor(f, dtype=torch.float32)
    f_1d = f_1d / f_1d.sum()
    f_2d = torch.outer(f_1d, f_1d).to(x.device, x.dtype)  # [k, k], sums to 1
    channels, pad = x.shape[1], (len(f) - 1) // 2
    if mode == "down":
        kernel = einops.repeat(f_2d, "k l -> c 1 k l", c=channels)
        return F.conv2d(x, kernel, groups=channels, stride=2, padding=(pad,))
    kernel = einops.repeat(f_2d * 4, "k l -> c 1 k l", c=channels)
    return F.conv_transpose2d(x, kernel, groups=channels, stride=2, padding=(pad,))


class MPFourier(nn.Module):
    """Magnitude-preserving Fourier features of a scalar (Karras et al. 2024, App. B.2): sqrt(2)·cos(x·f + p)."""

    def __init__(self, num_channels: int, bandwidth: float = 1.0):
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.randn(num_channels) * bandwidth)
        self.register_buffer("phases", 2 * math.pi * torch.rand(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B] -> [B, num_channels], computed in float32 and returned in x's dtype."""
        y = torch.outer(x.to(torch.float32), self.freqs.to(torch.float32))  # [B, C]
        y = y + self.phases.to(torch.float32)
        return (y.cos() * math.sqrt(2)).to(x.dtype)


class MPConv(nn.Module):
    """Magnitude-preserving convolution / linear layer with forced weight normalisation (Karras et al. 2024,
    Sec. 3.5, Eq. 66): y = conv(x, gain · normalize(W) / sqrt(fan_in)), no bias.

    `weight` is [out, in, *kernel]; an empty kernel makes a linear layer with weight [out, in].
    Every forward (eval too) normalises the weight, so post-hoc-EMA weights (not unit norm) work.
    In train mode the forward additionally **overwrites the stored weight** with normalize(W) first
    (`renormalize_weight_`), as the official training does: this keeps the effective learning rate
    constant. Compute outputs you want to compare in `eval()` if the stored weights must not change.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: Sequence[int]):
        super().__init__()
        self.out_channels = out_channels
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *kernel))

    @torch.no_grad()
    def renormalize_weight_(self) -> None:
        """Forced weight normalisation (Karras et al. 2024, Eq. 66): W <- normalize(W), in place."""
        self.weight.copy_(normalize(self.weight.to(torch.float32)))

    def forward(self, x: torch.Tensor, gain: float | torch.Tensor = 1.0) -> torch.Tensor:
        """x: [B, in] (linear) or [B, in, H, W] (conv, 'same' padding) -> [B, out(, H, W)]."""
        if self.training:
            self.renormalize_weight_()
        w = normalize(self.weight.to(torch.float32))  # unit RMS per output row
        fan_in = w[0].numel()
        gain = gain.to(torch.float32) if torch.is_tensor(gain) else gain
        w = (w * (gain / math.sqrt(fan_in))).to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        return F.conv2d(x, w, padding=(w.shape[-1] // 2,))


class Block(nn.Module):
    """Magnitude-preserving UNet residual block, encoder or decoder flavour (Karras et al. 2024, Fig. 21)."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, *,
                 flavor: str = "enc",               # 'enc' (skip conv + pixel norm first) | 'dec'
                 resample_mode: str = "keep",       # 'keep' | 'down' | 'up'
                 resample_filter: Sequence[float] = (1, 1),
                 attention: bool = False,           # self-attention after the residual branch
                 channels_per_head: int = 64,
                 dropout: float = 0.0,              # dropout probability in the residual branch (train only)
                 res_balance: float = 0.3,          # mp_sum weight of the residual branch
                 attn_balance: float = 0.3,         # mp_sum weight of the attention branch
                 clip_act: float | None = 256):     # clamp activations to +-clip_act
        super().__init__()
        if flavor not in ("enc", "dec"):
            raise ValueError(f"Block flavor must be 'enc' or 'dec'; found {flavor!r}")
        self.out_channels = out_channels
        self.flavor, self.resample_mode, self.resample_filter = flavor, resample_mode, tuple(resample_filter)
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.dropout, self.res_balance, self.attn_balance, self.clip_act = dropout, res_balance, attn_balance, clip_act
        self.emb_gain = nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, [3, 3])
        self.emb_linear = MPConv(emb_channels, out_channels, [])
        self.conv_res1 = MPConv(out_channels, out_channels, [3, 3])
        self.conv_skip = MPConv(in_channels, out_channels, [1, 1]) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, [1, 1]) if self.num_heads else None
        self.attn_proj = MPConv(out_channels, out_channels, [1, 1]) if self.num_heads else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x: [B, in, H, W], emb: [B or 1, emb] -> [B, out, H', W']."""
        x = resample(x, f=self.resample_filter, mode=self.resample_mode)
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)  # pixel norm
        # Residual branch, modulated by the embedding.
        y = self.conv_res0(mp_silu(x))
        c = self.emb_linear(emb, gain=self.emb_gain) + 1  # [B, out]
        y = mp_silu(y * c[:, :, None, None].to(y.dtype))
        if self.training and self.dropout != 0:  # official recipe (global RNG); DDO runs with dropout 0
            y = F.dropout(y, p=self.dropout)
        y = self.conv_res1(y)
        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)
        if self.num_heads:
            x = mp_sum(x, self._attention(x), t=self.attn_balance)
        if self.clip_act is not None:
            x = x.clamp(-self.clip_act, self.clip_act)
        return x

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        """Cosine self-attention: q, k, v normalised per head; qkv channels interleaved as (head, c, 3)."""
        height = x.shape[2]
        qkv = einops.rearrange(self.attn_qkv(x), "b (h c s) x y -> b h c s (x y)", h=self.num_heads, s=3)
        q, k, v = normalize(qkv, dim=2).unbind(3)  # each [B, heads, C/heads, HW]
        w = torch.einsum("nhcq,nhck->nhqk", q, k / math.sqrt(q.shape[2])).softmax(dim=3)  # [B, heads, HW, HW]
        y = torch.einsum("nhqk,nhck->nhcq", w, v)  # [B, heads, C/heads, HW]
        return self.attn_proj(einops.rearrange(y, "b h c (x y) -> b (h c) x y", x=height))


class UNet(nn.Module):
    """EDM2 magnitude-preserving UNet F_theta(x, c_noise, class_labels) (Karras et al. 2024, config G)."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int, *,
                 model_channels: int = 192,                    # base channels per resolution level
                 channel_mult: Sequence[int] = (1, 2, 3, 4),    # per-level multiplier of model_channels
                 channel_mult_noise: int | None = None,         # Fourier channels (None: channel_mult[0])
                 channel_mult_emb: int | None = None,           # embedding channels (None: max(channel_mult))
                 num_blocks: int = 3,                           # residual blocks per encoder level
                 attn_resolutions: Sequence[int] = (16, 8),     # resolutions with self-attention
                 label_balance: float = 0.5,                    # mp_sum weight of the label embedding
                 concat_balance: float = 0.5,                   # mp_cat weight of the skip connection
                 resample_filter: Sequence[float] = (1, 1),
                 channels_per_head: int = 64,
                 dropout: float = 0.0,
                 res_balance: float = 0.3,
                 attn_balance: float = 0.3,
                 clip_act: float | None = 256):
        super().__init__()
        cblock = [model_channels * m for m in channel_mult]
        cnoise = model_channels * channel_mult_noise if channel_mult_noise is not None else cblock[0]
        cemb = model_channels * channel_mult_emb if channel_mult_emb is not None else max(cblock)
        block_kwargs = dict(resample_filter=resample_filter, channels_per_head=channels_per_head,
                            dropout=dropout, res_balance=res_balance, attn_balance=attn_balance,
                            clip_act=clip_act)
        self.label_dim, self.label_balance, self.concat_balance = label_dim, label_balance, concat_balance
        self.out_gain = nn.Parameter(torch.zeros([]))
        self.emb_fourier = MPFourier(cnoise)
        self.emb_noise = MPConv(cnoise, cemb, [])
        self.emb_label = MPConv(label_dim, cemb, []) if label_dim else None

        # Encoder: the first level starts with a conv on [x, ones]; later levels start with a down block.
        self.enc = nn.ModuleDict()
        cout = img_channels + 1
        for level, channels in enumerate(cblock):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, channels
                self.enc[f"{res}x{res}_conv"] = MPConv(cin, cout, [3, 3])
            else:
                self.enc[f"{res}x{res}_down"] = Block(cout, cout, cemb, flavor="enc", resample_mode="down",
                                                      **block_kwargs)
            for idx in range(num_blocks):
                cin, cout = cout, channels
                self.enc[f"{res}x{res}_block{idx}"] = Block(cin, cout, cemb, flavor="enc",
                                                            attention=res in attn_resolutions, **block_kwargs)

        # Decoder: two middle blocks at the lowest level, an up block elsewhere; each block takes a skip.
        self.dec = nn.ModuleDict()
        skips = [m.out_channels for m in self.enc.values()]
        for level, channels in reversed(list(enumerate(cblock))):
            res = img_resolution >> level
            if level == len(cblock) - 1:
                self.dec[f"{res}x{res}_in0"] = Block(cout, cout, cemb, flavor="dec", attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = Block(cout, cout, cemb, flavor="dec", **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = Block(cout, cout, cemb, flavor="dec", resample_mode="up",
                                                    **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), channels
                self.dec[f"{res}x{res}_block{idx}"] = Block(cin, cout, cemb, flavor="dec",
                                                            attention=res in attn_resolutions, **block_kwargs)
        self.out_conv = MPConv(cout, img_channels, [3, 3])

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor,
                class_labels: torch.Tensor | None) -> torch.Tensor:
        """x: [B, C, H, W], noise_labels (c_noise): [B or 1], class_labels: [B or 1, label_dim] -> [B, C, H, W]."""
        emb = self.emb_noise(self.emb_fourier(noise_labels))  # [B, cemb]
        if self.emb_label is not None:
            labels = class_labels * math.sqrt(class_labels.shape[1])
            emb = mp_sum(emb, self.emb_label(labels), t=self.label_balance)
        emb = mp_silu(emb)

        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)  # [B, C + 1, H, W]
        skips = []
        for name, block in self.enc.items():
            x = block(x) if name.endswith("_conv") else block(x, emb)
            skips.append(x)
        for name, block in self.dec.items():
            if "block" in name:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = block(x, emb)
        return self.out_conv(x, gain=self.out_gain)


class Precond(nn.Module):
    """EDM2 preconditioned denoiser D(x; sigma) = c_skip·x + c_out·F(c_in·x, ln(sigma)/4) with a learned
    log-variance head for uncertainty weighting (Karras et al. 2022, Tab. 1; Karras et al. 2024, App. B.2).

    `sigma_min = 0`, `sigma_max = inf` and the identity `round_sigma` let generic EDM samplers clamp
    harmlessly (EDM2's own sampler does neither).
    """

    sigma_min = 0.0
    sigma_max = float("inf")

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int, *,
                 use_fp16: bool = True,         # run the UNet in float16 on CUDA (never on CPU)
                 sigma_data: float = 0.5,       # expected standard deviation of the data
                 logvar_channels: int = 128,    # Fourier channels of the log-variance head
                 **unet_kwargs):                # forwarded to UNet (model_channels, channel_mult, dropout, ...)
        super().__init__()
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.use_fp16, self.sigma_data = use_fp16, sigma_data
        self.unet = UNet(img_resolution, img_channels, label_dim, **unet_kwargs)
        self.logvar_fourier = MPFourier(logvar_channels)
        self.logvar_linear = MPConv(logvar_channels, 1, [])

    def round_sigma(self, sigma: float | torch.Tensor) -> torch.Tensor:
        """Identity: EDM2 uses continuous noise levels."""
        return torch.as_tensor(sigma)

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor, class_labels: torch.Tensor | None = None,
                force_fp32: bool = False, return_logvar: bool = False):
        """x: [N, C, H, W], sigma: scalar or [N] -> D_x: [N, C, H, W] float32 (and logvar: [N or 1, 1, 1, 1]).

        class_labels: None (zeros [1, label_dim] for a conditional net), float one-hot [N or 1, label_dim],
        or integer class indices [N] in [0, label_dim).
        """
        x = self._check_x(x).to(torch.float32)
        sigma = self._check_sigma(sigma, x).reshape(-1, 1, 1, 1)  # [N or 1, 1, 1, 1]
        class_labels = self._check_labels(class_labels, x)
        dtype = torch.float16 if self.use_fp16 and not force_fp32 and x.device.type == "cuda" else torch.float32

        sigma_data = self.sigma_data
        c_skip = sigma_data ** 2 / (sigma ** 2 + sigma_data ** 2)
        c_out = sigma * sigma_data / (sigma ** 2 + sigma_data ** 2).sqrt()
        c_in = 1 / (sigma_data ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.flatten().log() / 4  # [N or 1]

        F_x = self.unet((c_in * x).to(dtype), c_noise, class_labels)
        D_x = c_skip * x + c_out * F_x.to(torch.float32)
        if not return_logvar:
            return D_x
        logvar = self.logvar_linear(self.logvar_fourier(c_noise)).reshape(-1, 1, 1, 1)
        return D_x, logvar

    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        expected = (self.img_channels, self.img_resolution, self.img_resolution)
        if not torch.is_tensor(x) or not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor; found {type(x).__name__} "
                            f"{getattr(x, 'dtype', '')}")
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must have shape [N, {', '.join(map(str, expected))}]; found {list(x.shape)}")
        return x

    def _check_sigma(self, sigma: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32)
        if sigma.numel() not in (1, x.shape[0]):
            raise ValueError(f"sigma must be a scalar or have {x.shape[0]} entries (one per image); "
                             f"found shape {list(sigma.shape)}")
        if not bool(torch.all(sigma > 0)):
            raise ValueError(f"sigma must be positive (c_noise = ln(sigma)/4); found min {sigma.min().item()}")
        return sigma

    def _check_labels(self, class_labels: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
        """Return float32 labels [N or 1, label_dim], or None for an unconditional net."""
        if self.label_dim == 0:
            if class_labels is not None:
                raise ValueError("class_labels given to an unconditional net (label_dim = 0); pass None")
            return None
        if class_labels is None:
            return torch.zeros([1, self.label_dim], device=x.device)  # the untrained "no class" input
        if not torch.is_tensor(class_labels) or class_labels.dtype == torch.bool:
            raise TypeError(f"class_labels must be a float one-hot or integer index tensor; "
                            f"found {type(class_labels).__name__} {getattr(class_labels, 'dtype', '')}")
        batch = x.shape[0]
        if not class_labels.is_floating_point():
            if class_labels.ndim != 1 or class_labels.shape[0] != batch:
                raise ValueError(f"integer class_labels must have shape [{batch}]; found {list(class_labels.shape)}")
            bad = class_labels[(class_labels < 0) | (class_labels >= self.label_dim)]
            if bad.numel():
                raise ValueError(f"class index {bad[0].item()} out of range [0, {self.label_dim})")
            return F.one_hot(class_labels.to(x.device), self.label_dim).to(torch.float32)
        if class_labels.ndim != 2 or class_labels.shape[1] != self.label_dim or class_labels.shape[0] not in (1, batch):
            raise ValueError(f"float class_labels must have shape [{batch} or 1, {self.label_dim}]; "
                             f"found {list(class_labels.shape)}")
        return class_labels.to(x.device, torch.float32)
