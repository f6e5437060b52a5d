"""Multi-scale residual VQ tokenizer of VAR (Tian et al. 2024, "Visual Autoregressive Modeling", Alg. 1–2).

An image x in [−1, 1], [B, 3, H, W], is encoded to f = quant_conv(encoder(x)), [B, Cvae, h, w] with
h = H/16. The quantizer writes f as a sum over scales k = 1..K of φ_k(up(E[r_k])), where r_k is a
pn_k × pn_k map of codebook indices found greedily on the residual (Alg. 1):

    z_k = area-down(f − f̂_{k−1}) to pn_k,   r_k = argmin_v ‖z_k − E_v‖²,
    f̂_k = f̂_{k−1} + φ_k(bicubic-up(E[r_k]))

(no resampling at the last scale, whose size is h). φ(h) = (1 − ρ)·h + ρ·conv3×3(h) with ρ = |quant_resi|.
Decoding (Alg. 2) sums the same terms from given token maps. The VAR transformer is teacher-forced with
the area-downsampled running sums f̂_k → pn_{k+1}.

Names and numerics mirror FoundationVision/VAR `models/vqvae.py` and `models/quant.py`, so the official
`vae_ch160v4096z32.pth` loads with `strict=True` and tokens match exactly. Differences from upstream:
- the training forward needs no torch.distributed (it all-reduces codebook hits only when initialised) and
  updates the codebook-usage EMA in every training-mode call;
- token maps must be square (int patch numbers), and a single scale (K = 1) uses φ index 0 where upstream
  divides by zero;
- `load_state_dict` keeps our `quantize.ema_vocab_hit_SV` when the checkpoint's scale count differs, as
  upstream does, but without mutating the caller's dict. The buffer only records codebook usage.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ddo_lib.var.vae_blocks import Decoder, Encoder

logger = logging.getLogger(__name__)

PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)  # 256 px, L = 680
CH_MULT = (1, 1, 2, 2, 4)  # hard-coded by the official VQVAE: downsampling ×16
DOWNSAMPLE = 2 ** (len(CH_MULT) - 1)
EMA_HIT = "quantize.ema_vocab_hit_SV"
Tokens = Sequence[torch.Tensor]  # per scale k: int64 [B, pn_k²], row-major


# ----------------------------------------------------------------------------------------------------- φ
class Phi(nn.Conv2d):
    """Residual refinement φ(h) = (1 − ρ)·h + ρ·conv3×3(h), ρ = |quant_resi| (Tian et al. 2024, §3.3)."""

    def __init__(self, channels: int, quant_resi: float):
        super().__init__(channels, channels, kernel_size=3, stride=1, padding=1)
        self.resi_ratio = abs(quant_resi)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * (1 - self.resi_ratio) + super().forward(h) * self.resi_ratio


def phi_ticks(num_phis: int) -> np.ndarray:
    """Positions in [0, 1] of `num_phis` φ: linspace(1/3K, 1 − 1/3K) for K = 4, else linspace(1/2K, 1 − 1/2K)."""
    margin = 1 / 3 / num_phis if num_phis == 4 else 1 / 2 / num_phis
    return np.linspace(margin, 1 - margin, num_phis)


def phi_index_per_scale(num_scales: int, num_phis: int) -> list[int]:
    """φ used at each scale: the tick nearest to si/(K − 1), float64 numpy argmin (first wins ties).

    Ties are decided by float64 rounding exactly as upstream: 10 scales, 4 φ → [0,0,1,1,1,2,2,3,3,3].
    """
    ticks = phi_ticks(num_phis)
    positions = [si / (num_scales - 1) if num_scales > 1 else 0.0 for si in range(num_scales)]
    return [int(np.argmin(np.abs(ticks - p))) for p in positions]


class PhiShared(nn.Module):
    """One φ for all scales (share_quant_resi = 1); key `qresi`."""

    def __init__(self, qresi: nn.Module):
        super().__init__()
        self.qresi = qresi


class PhiPartiallyShared(nn.Module):
    """K φ shared among the scales by nearest tick (share_quant_resi = K ≥ 2); keys `qresi_ls.{i}`."""

    def __init__(self, qresi_ls: nn.ModuleList):
        super().__init__()
        self.qresi_ls = qresi_ls


def _phi_or_identity(channels: int, quant_resi: float) -> nn.Module:
    return Phi(channels, quant_resi) if abs(quant_resi) > 1e-6 else nn.Identity()


def _build_phis(channels: int, quant_resi: float, share_quant_resi: int, num_phis_unshared: int) -> nn.Module:
    """share_quant_resi 0: one φ per scale (keys `{i}`); 1: one shared; K ≥ 2: K partially shared."""
    if share_quant_resi < 0:
        raise ValueError(f"share_quant_resi must be ≥ 0, found {share_quant_resi}")
    if share_quant_resi == 0:
        return nn.ModuleList([_phi_or_identity(channels, quant_resi) for _ in range(num_phis_unshared)])
    if share_quant_resi == 1:
        return PhiShared(_phi_or_identity(channels, quant_resi))
    return PhiPartiallyShared(nn.ModuleList([_phi_or_identity(channels, quant_resi)
                                             for _ in range(share_quant_resi)]))


def _phi_list(quant_resi: nn.Module) -> list[nn.Module]:
    if isinstance(quant_resi, PhiShared):
        return [quant_resi.qresi]
    if isinstance(quant_resi, PhiPartiallyShared):
        return list(quant_resi.qresi_ls)
    return list(quant_resi)


# ------------------------------------------------------------------------------------------- quantizer
class MultiScaleQuantizer(nn.Module):
    """Residual quantizer over square scales `v_patch_nums` with a shared codebook E [V, Cvae] (VAR Alg. 1)."""

    def __init__(self, vocab_size: int, Cvae: int, *, using_znorm: bool = False, beta: float = 0.25,
                 default_qresi_counts: int = 0, v_patch_nums: Sequence[int] = PATCH_NUMS_256,
                 quant_resi: float = 0.5, share_quant_resi: int = 4):
        super().__init__()
        self.vocab_size, self.Cvae, self.beta, self.using_znorm = vocab_size, Cvae, beta, using_znorm
        self.v_patch_nums = tuple(v_patch_nums)
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(self.v_patch_nums), vocab_size))
        self.record_hit = 0
        self.quant_resi = _build_phis(Cvae, quant_resi, share_quant_resi,
                                      default_qresi_counts or len(self.v_patch_nums))
        self.embedding = nn.Embedding(vocab_size, Cvae)
        phis = _phi_list(self.quant_resi)
        self.phi_index = phi_index_per_scale(len(self.v_patch_nums), len(phis))

    def phi(self, si: int) -> nn.Module:
        """φ applied at scale index si."""
        return _phi_list(self.quant_resi)[self.phi_index[si]]

    def nearest_code(self, z: torch.Tensor) -> torch.Tensor:
        """z [N, Cvae] → codebook index [N]: L2 argmin (cosine argmax when using_znorm)."""
        E = self.embedding.weight.detach()  # [V, Cvae]
        if self.using_znorm:
            return torch.argmax(F.normalize(z, dim=-1) @ F.normalize(E, dim=-1).T, dim=1)
        squared = z.square().sum(dim=1, keepdim=True) + E.square().sum(dim=1)  # [N, V]
        return torch.argmin(torch.addmm(squared, z, E.T, alpha=-2), dim=1)

    def _upsampled_codes(self, si: int, idx: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """φ_si(up(E[idx])): idx [B, pn²] → [B, Cvae, h, w] (bicubic up except at the last scale)."""
        pn = self.v_patch_nums[si]
        h = rearrange(self.embedding(idx), "b (h w) c -> b c h w", h=pn, w=pn)
        if si != len(self.v_patch_nums) - 1:
            h = F.interpolate(h, size=size, mode="bicubic")
        return self.phi(si)(h)

    def f_to_tokens(self, f: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Greedy residual quantisation of f [B, Cvae, h, w] → (tokens [B, pn²] per scale, f̂_k per scale).

        The search runs on detached residuals; the returned f̂_k depend on the codebook and φ (for the loss).
        """
        B, C, H, W = f.shape
        if (H, W) != (self.v_patch_nums[-1],) * 2:
            raise ValueError(f"latent must be {self.v_patch_nums[-1]}×{self.v_patch_nums[-1]} (last patch "
                             f"number), found {H}×{W}")
        f_rest, f_hat = f.detach().clone(), torch.zeros_like(f)
        tokens, f_hats = [], []
        for si, pn in enumerate(self.v_patch_nums):
            z = f_rest if si == len(self.v_patch_nums) - 1 else F.interpolate(f_rest, size=(pn, pn), mode="area")
            idx = self.nearest_code(rearrange(z, "b c h w -> (b h w) c")).view(B, pn * pn)  # [B, pn²]
            h = self._upsampled_codes(si, idx, (H, W))  # [B, Cvae, h, w]
            f_hat = f_hat + h
            f_rest = f_rest - h.detach()
            tokens.append(idx)
            f_hats.append(f_hat)
        return tokens, f_hats

    def tokens_to_f_hat(self, tokens: Tokens) -> torch.Tensor:
        """f̂_K = Σ_k φ_k(up(E[r_k])) [B, Cvae, h, w]."""
        size = (self.v_patch_nums[-1],) * 2
        f_hat = 0.0
        for si, idx in enumerate(tokens):
            f_hat = f_hat + self._upsampled_codes(si, idx, size)
        return f_hat

    def teacher_forcing_input(self, tokens: Tokens) -> torch.Tensor:
        """Inputs of scales 2..K: area-down(f̂_{k−1} → pn_k), concatenated → [B, L − pn_1², Cvae] (fp32)."""
        B, size = tokens[0].shape[0], (self.v_patch_nums[-1],) * 2
        f_hat = torch.zeros(B, self.Cvae, *size, dtype=torch.float32, device=tokens[0].device)
        inputs = []
        for si in range(len(self.v_patch_nums) - 1):
            f_hat, next_map = self.next_autoregressive_input(si, f_hat, self._codes(si, tokens[si]))
            inputs.append(rearrange(next_map, "b c h w -> b (h w) c"))  # [B, pn_{si+1}², Cvae]
        if not inputs:
            return torch.zeros(B, 0, self.Cvae, dtype=torch.float32, device=tokens[0].device)
        return torch.cat(inputs, dim=1)

    def _codes(self, si: int, idx: torch.Tensor) -> torch.Tensor:
        pn = self.v_patch_nums[si]
        return rearrange(self.embedding(idx), "b (h w) c -> b c h w", h=pn, w=pn)  # [B, Cvae, pn, pn]

    def next_autoregressive_input(self, si: int, f_hat: torch.Tensor,
                                  h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add scale si's codes h [B, Cvae, pn, pn] to f̂; return (f̂, f̂ area-downsampled to pn_{si+1}).

        At the last scale the second value is f̂ itself. `f_hat` is not modified in place.
        """
        last = len(self.v_patch_nums) - 1
        size = (self.v_patch_nums[-1],) * 2
        if si != last:
            h = F.interpolate(h, size=size, mode="bicubic")
        f_hat = f_hat + self.phi(si)(h)
        if si == last:
            return f_hat, f_hat
        pn = self.v_patch_nums[si + 1]
        return f_hat, F.interpolate(f_hat, size=(pn, pn), mode="area")

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training pass: (straight-through f̂ [B, Cvae, h, w], VQ loss []).

        VQ loss = mean over scales k of β·mse(sg f̂_k, f) + mse(f̂_k, sg f) (sg = stop-gradient); in training
        mode the per-scale codebook hits update `ema_vocab_hit_SV`.
        """
        f = f.float()
        tokens, f_hats = self.f_to_tokens(f)  # f̂_k carry gradients into the codebook and φ
        loss = f.new_zeros(())
        for si, (idx, f_hat) in enumerate(zip(tokens, f_hats)):
            loss = loss + self.beta * F.mse_loss(f_hat.detach(), f) + F.mse_loss(f_hat, f.detach())
            if self.training:
                self._record_hits(si, idx)
        return (f_hats[-1].detach() - f.detach()) + f, loss / len(tokens)

    @torch.no_grad()
    def _record_hits(self, si: int, idx: torch.Tensor) -> None:
        """EMA of per-scale codebook hit counts (summed over processes when torch.distributed is initialised)."""
        hits = idx.flatten().bincount(minlength=self.vocab_size).float()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(hits)
        momentum = 0.0 if self.record_hit == 0 else 0.9 if self.record_hit < 100 else 0.99
        self.ema_vocab_hit_SV[si].mul_(momentum).add_(hits * (1 - momentum))
        self.record_hit += 1


# ----------------------------------------------------------------------------------------------- VQVAE
class VQVAE(nn.Module):
    """VAR tokenizer: encoder → quant_conv → multi-scale quantizer → post_quant_conv → decoder (×16)."""

    def __init__(self, *,
                 vocab_size: int = 4096,                    # V, codebook size
                 z_channels: int = 32,                      # Cvae, latent / code width
                 ch: int = 160,                             # encoder/decoder base width (multiple of 32)
                 dropout: float = 0.0,                      # res-block dropout (train mode only)
                 beta: float = 0.25,                        # commitment weight of the VQ loss
                 using_znorm: bool = False,                 # cosine instead of L2 code search
                 quant_conv_ks: int = 3,                    # kernel of quant_conv / post_quant_conv
                 quant_resi: float = 0.5,                   # ρ of φ(h) = (1 − ρ)h + ρ conv(h); ~0 = identity
                 share_quant_resi: int = 4,                 # 0: φ per scale, 1: one φ, K: K shared φ
                 default_qresi_counts: int = 0,             # number of φ when share_quant_resi = 0 (0 = K)
                 v_patch_nums: Sequence[int] = PATCH_NUMS_256,  # square token-map sizes, small to large
                 test_mode: bool = True):                   # eval() and requires_grad False
        super().__init__()
        _check_patch_nums(v_patch_nums)
        self.Cvae, self.downsample = z_channels, DOWNSAMPLE
        blocks = dict(ch=ch, ch_mult=CH_MULT, num_res_blocks=2, dropout=dropout, in_channels=3,
                      z_channels=z_channels, using_sa=True, using_mid_sa=True)
        self.encoder = Encoder(double_z=False, **blocks)
        self.decoder = Decoder(**blocks)
        self.vocab_size = vocab_size
        self.quantize = MultiScaleQuantizer(vocab_size, z_channels, using_znorm=using_znorm, beta=beta,
                                            default_qresi_counts=default_qresi_counts, v_patch_nums=v_patch_nums,
                                            quant_resi=quant_resi, share_quant_resi=share_quant_resi)
        self.quant_conv = nn.Conv2d(z_channels, z_channels, quant_conv_ks, padding=quant_conv_ks // 2)
        self.post_quant_conv = nn.Conv2d(z_channels, z_channels, quant_conv_ks, padding=quant_conv_ks // 2)
        if test_mode:
            self.eval()
            self.requires_grad_(False)

    @property
    def v_patch_nums(self) -> tuple[int, ...]:
        return self.quantize.v_patch_nums

    @property
    def image_size(self) -> int:
        return DOWNSAMPLE * self.v_patch_nums[-1]

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """f = quant_conv(encoder(x)): images [B, 3, H, W] in [−1, 1] → [B, Cvae, H/16, W/16]."""
        _check_images(self, images)
        return self.quant_conv(self.encoder(images))

    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        """decoder(post_quant_conv(f̂)) clamped to [−1, 1]: [B, Cvae, h, w] → [B, 3, 16h, 16w]."""
        return self.decoder(self.post_quant_conv(f_hat)).clamp(-1, 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training pass: (reconstruction [B, 3, H, W] in [−1, 1] via straight-through f̂, VQ loss [])."""
        f_hat, vq_loss = self.quantize(self.encode(images))
        return self.decode(f_hat), vq_loss

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """As nn.Module, but a `quantize.ema_vocab_hit_SV` with another scale count is replaced by ours."""
        ours = self.quantize.ema_vocab_hit_SV
        theirs = state_dict.get(EMA_HIT)
        if theirs is not None and theirs.shape[0] != ours.shape[0]:
            logger.info("VQVAE: checkpoint %s has %d scales, model has %d; keeping the model's buffer",
                        EMA_HIT, theirs.shape[0], ours.shape[0])
            state_dict = {**state_dict, EMA_HIT: ours.detach().clone()}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def vqvae_from_official(init_kwargs: Mapping[str, Any]) -> VQVAE:
    """Our VQVAE for the keyword arguments of the official `VQVAE(...)` constructor (unknown keys rejected)."""
    accepted = ("vocab_size", "z_channels", "ch", "dropout", "beta", "using_znorm", "quant_conv_ks", "quant_resi",
                "share_quant_resi", "default_qresi_counts", "v_patch_nums", "test_mode")
    unknown = sorted(set(init_kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"unknown VQVAE arguments {unknown}; accepted: {list(accepted)}")
    return VQVAE(**init_kwargs)


# ------------------------------------------------------------------------------------------ validation
def _check_patch_nums(v_patch_nums: Sequence[int]) -> None:
    nums = list(v_patch_nums)
    if not nums or not all(isinstance(p, (int, np.integer)) and p >= 1 for p in nums):
        raise ValueError(f"v_patch_nums must be a non-empty sequence of positive ints, found {v_patch_nums!r}")


def _check_images(vqvae: VQVAE, images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        found = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
        raise TypeError(f"images must be a floating-point tensor in [-1, 1], found {found}")
    size = vqvae.image_size
    if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (size, size):
        raise ValueError(f"images must be [B, 3, {size}, {size}] (16 × last patch number "
                         f"{vqvae.v_patch_nums[-1]}), found {list(images.shape)}")


def _check_tokens(vqvae: VQVAE, tokens: Tokens) -> None:
    pns = vqvae.v_patch_nums
    if not isinstance(tokens, Sequence) or len(tokens) != len(pns):
        found = f"length {len(tokens)}" if isinstance(tokens, Sequence) else type(tokens).__name__
        raise ValueError(f"tokens must be a list of {len(pns)} LongTensors (one per scale {pns}), found {found}")
    B = tokens[0].shape[0] if isinstance(tokens[0], torch.Tensor) else None
    for si, idx in enumerate(tokens):
        if not isinstance(idx, torch.Tensor) or idx.dtype != torch.long:
            raise TypeError(f"tokens[{si}] must be an int64 tensor, found "
                            f"{idx.dtype if isinstance(idx, torch.Tensor) else type(idx).__name__}")
        if tuple(idx.shape) != (B, pns[si] ** 2):
            raise ValueError(f"tokens[{si}] must be [B={B}, {pns[si] ** 2}], found {list(idx.shape)}")
        if idx.numel() and (idx.min() < 0 or idx.max() >= vqvae.vocab_size):
            raise ValueError(f"tokens[{si}] must lie in [0, {vqvae.vocab_size}), found "
                             f"[{idx.min().item()}, {idx.max().item()}]")


# ------------------------------------------------------------------------------------------ public API
@torch.no_grad()
def image_to_tokens(vqvae: VQVAE, images: torch.Tensor) -> list[torch.Tensor]:
    """Deterministic multi-scale tokens r_1..r_K of images [B, 3, H, W] in [−1, 1]: int64 [B, pn_k²] each."""
    return vqvae.quantize.f_to_tokens(vqvae.encode(images))[0]


def tokens_to_teacher_forcing_input(vqvae: VQVAE, tokens: Tokens) -> torch.Tensor:
    """VAR input of scales 2..K from the token maps: float32 [B, L − pn_1², Cvae] (upstream x_BLCv_wo_first_l)."""
    _check_tokens(vqvae, tokens)
    return vqvae.quantize.teacher_forcing_input(tokens)


def tokens_to_f_hat(vqvae: VQVAE, tokens: Tokens) -> torch.Tensor:
    """f̂ = Σ_k φ_k(up(E[r_k])): [B, Cvae, h, w]."""
    _check_tokens(vqvae, tokens)
    return vqvae.quantize.tokens_to_f_hat(tokens)


def tokens_to_image(vqvae: VQVAE, tokens: Tokens) -> torch.Tensor:
    """Decode the K token maps to images [B, 3, H, W] in [−1, 1] (upstream idxBl_to_img, last_one=True)."""
    return vqvae.decode(tokens_to_f_hat(vqvae, tokens))


def reconstruct(vqvae: VQVAE, images: torch.Tensor) -> torch.Tensor:
    """Encode, quantise over all scales and decode: [B, 3, H, W] in [−1, 1] → same shape in [−1, 1]."""
    _, f_hats = vqvae.quantize.f_to_tokens(vqvae.encode(images))
    return vqvae.decode(f_hats[-1])


# Step-by-step helpers for the next-scale sampler.
def codebook(vqvae: VQVAE) -> torch.Tensor:
    """Codebook E [V, Cvae]."""
    return vqvae.quantize.embedding.weight


def empty_f_hat(vqvae: VQVAE, batch_size: int) -> torch.Tensor:
    """f̂_0 = 0: float32 [B, Cvae, h, w] on the VQVAE's device."""
    size = vqvae.v_patch_nums[-1]
    return torch.zeros(batch_size, vqvae.Cvae, size, size, device=codebook(vqvae).device)


def next_autoregressive_input(vqvae: VQVAE, si: int, f_hat: torch.Tensor,
                              h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Add scale si's codes h [B, Cvae, pn, pn] to f̂ → (f̂, next scale's input map [B, Cvae, pn', pn'])."""
    if not 0 <= si < len(vqvae.v_patch_nums):
        raise ValueError(f"scale index must be in [0, {len(vqvae.v_patch_nums)}), found {si}")
    return vqvae.quantize.next_autoregressive_input(si, f_hat, h)


def f_hat_to_image(vqvae: VQVAE, f_hat: torch.Tensor) -> torch.Tensor:
    """decoder(post_quant_conv(f̂)) clamped: [B, Cvae, h, w] → [B, 3, H, W] in [−1, 1]."""
    return vqvae.decode(f_hat)
