"""VAR transformer: class-conditional next-scale prediction (Tian et al. 2024, "Visual Autoregressive Modeling", §3).

A GPT-style decoder over the concatenated multi-scale token maps r_1..r_K (L = Σ pn² tokens). Position i
predicts token i of cat(r_1..r_K) with no shift: the start token (class embedding + `pos_start`) predicts
the 1×1 map, the tokens built from the teacher-forcing input of scale k predict r_k. Attention is
block-causal over scales (bidirectional inside a scale). Blocks are AdaLN-modulated by the class
embedding; the attention is cosine attention with a learnable per-head temperature (`attn_l2_norm`).

Module, parameter and buffer names mirror FoundationVision/VAR (`models/var.py`, `models/basic_var.py`), so
official checkpoints load with `strict=True` (buffers `lvl_1L`, `attn_bias_for_masking`, `zero_k_bias`
included). Deliberate differences from the official module:
- no hidden randomness in `forward`: upstream replaces labels by the null class with `torch.rand(B) <
  cond_drop_rate` drawn from the global RNG on *every* call (eval included). Here label dropout is the
  caller's: pass labels already set to the null class `num_classes`, or `uncond_mask` ([B] bool, True =
  null class). `cond_drop_rate` is accepted and stored for reference only;
- no global monkeypatching of `reset_parameters`; `init_weights` takes an explicit generator;
- the KV cache is an explicit `KVCache` object passed to `forward_blocks`, not module state.
Dropout / drop-path rates act in `train()` mode only (like `nn.Dropout`); DDO and likelihoods use 0 / eval.

Attention kernels of the teacher-forced forward (`VAR.attention`, set in the constructor or assigned later,
so an official checkpoint loaded with default arguments can switch; not part of the state dict):

| `attention` | block-causal visibility imposed by                                    | CUDA SDPA kernels     |
|-------------|-----------------------------------------------------------------------|-----------------------|
| `"mask"`    | one SDPA call over all L tokens with the additive bias [1, 1, L, L]   | no flash (float mask) |
| `"prefix"`  | one mask-free SDPA call per scale k: its queries, the keys and values | flash in bf16 / fp16  |
|             | of scales ≤ k (a prefix of the sequence); outputs concatenated        |                       |

Both are exact: a query of scale k sees exactly the keys of its prefix r_≤k (Tian et al. 2024, §3), and
masked keys add exp(−∞) = 0, so the two differ only by float summation order. Flash attention takes no
additive mask, so "prefix" is the way to use it for teacher forcing; it also skips the masked upper blocks
(≈ 38 % of the score matrix at 256 px). The default "mask" keeps the official numerics. KV-cache sampling
(no mask, one scale per call) is the same for both.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

IMAGENET_PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)  # L = 680
IMAGENET_PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)  # L = 2240
IGNORED_OFFICIAL_KWARGS = ("flash_if_available", "fused_if_available")
ATTENTION_KINDS = ("mask", "prefix")  # teacher-forced attention: one masked SDPA, or mask-free per scale


class DropPath(nn.Module):
    """Stochastic depth: zero a whole residual branch per sample with probability `drop_prob` (train only)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class LayerCache:
    """Keys and values of one attention layer for the scales seen so far: [B, H, l, head_dim] each."""

    def __init__(self):
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this scale's keys/values along the token axis; return all cached so far."""
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v


KVCache = list  # list[LayerCache], one per block; built by `VAR.new_kv_cache()`


def prefix_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale_ends: Sequence[int], *,
                     scale: float, dropout_p: float = 0.0) -> torch.Tensor:
    """Block-causal attention without a mask: the queries of scale k attend to the keys [0, end_k).

    q, k, v: [B, H, L, d]; scale_ends: cumulative token counts end_1 < ... < end_K = L; returns [B, H, L, d].
    """
    outputs, begin = [], 0
    for end in scale_ends:
        outputs.append(F.scaled_dot_product_attention(q[:, :, begin:end], k[:, :, :end], v[:, :, :end],
                                                      dropout_p=dropout_p, scale=scale))  # [B, H, end - begin, d]
        begin = end
    return torch.cat(outputs, dim=2)  # [B, H, L, d]


class SelfAttention(nn.Module):
    """Multi-head self-attention without a key bias; optional cosine attention with temperature exp(s) ≤ 100."""

    def __init__(self, embed_dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 attn_l2_norm: bool = False):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
        self.attn_l2_norm = attn_l2_norm
        if attn_l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), math.log(4.0)))
            self.max_scale_mul = math.log(100.0)
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.q_bias = nn.Parameter(torch.zeros(embed_dim))
        self.v_bias = nn.Parameter(torch.zeros(embed_dim))
        self.register_buffer("zero_k_bias", torch.zeros(embed_dim))
        self.mat_qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=False)
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()
        self.attn_drop = attn_drop

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None, cache: LayerCache | None = None,
                scale_ends: Sequence[int] | None = None) -> torch.Tensor:
        """x: [B, l, C] → [B, l, C]. attn_bias: [1, 1, l, l] additive (0 / -inf) or None (no mask, or the
        cache's visibility); scale_ends: instead of a bias, block-causal attention by `prefix_attention`."""
        bias = torch.cat([self.q_bias, self.zero_k_bias, self.v_bias])  # [3C]
        qkv = F.linear(x, self.mat_qkv.weight, bias)  # [B, l, 3C]
        q, k, v = rearrange(qkv, "b l (three h d) -> three b h l d", three=3, h=self.num_heads)
        if self.attn_l2_norm:
            temperature = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()  # [1, H, 1, 1]
            q = F.normalize(q, dim=-1) * temperature
            k = F.normalize(k, dim=-1)
        if cache is not None:
            k, v = cache.extend(k, v)  # [B, H, l_total, d]
        dropout_p = self.attn_drop if self.training else 0.0
        if scale_ends is not None:
            if attn_bias is not None or cache is not None:
                raise ValueError("SelfAttention: scale_ends replaces attn_bias and the KV cache; pass neither")
            out = prefix_attention(q, k, v, scale_ends, scale=self.scale, dropout_p=dropout_p)  # [B, H, l, d]
        else:
            mask = None if attn_bias is None else attn_bias.to(q.dtype)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                 dropout_p=dropout_p, scale=self.scale)  # [B, H, l, d]
        out = rearrange(out, "b h l d -> b l (h d)")  # [B, l, C]
        return self.proj_drop(self.proj(out))


class FFN(nn.Module):
    """Transformer MLP: fc1 (C → hidden) → GELU (tanh approximation) → fc2 (hidden → C)."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class SharedAdaLin(nn.Linear):
    """AdaLN projection shared by all blocks (d36): cond [B, D] → [B, 1, 6, C]."""

    def forward(self, cond_BD: torch.Tensor) -> torch.Tensor:
        return rearrange(super().forward(cond_BD), "b (six c) -> b 1 six c", six=6)


class AdaLNSelfAttn(nn.Module):
    """Transformer block modulated by the class: x += γ1·attn(LN(x)(1+scale1)+shift1); same for the FFN."""

    def __init__(self, embed_dim: int, cond_dim: int, num_heads: int, *, mlp_ratio: float = 4.0,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0, norm_eps: float = 1e-6,
                 shared_aln: bool = False, attn_l2_norm: bool = False):
        super().__init__()
        self.C, self.shared_aln = embed_dim, shared_aln
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.attn = SelfAttention(embed_dim, num_heads, attn_drop, drop, attn_l2_norm)
        self.ffn = FFN(embed_dim, round(embed_dim * mlp_ratio), drop)
        self.ln_wo_grad = nn.LayerNorm(embed_dim, eps=norm_eps, elementwise_affine=False)
        if shared_aln:
            self.ada_gss = nn.Parameter(torch.zeros(1, 1, 6, embed_dim))  # set by init_weights or a checkpoint
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * embed_dim))

    def modulation(self, cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """[γ1, γ2, scale1, scale2, shift1, shift2], each [B, 1, C] (cond: [B, D], or [B, 1, 6, C] if shared)."""
        if self.shared_aln:
            return (self.ada_gss + cond).unbind(2)
        return rearrange(self.ada_lin(cond), "b (six c) -> b 1 six c", six=6).unbind(2)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, attn_bias: torch.Tensor | None,
                cache: LayerCache | None = None, scale_ends: Sequence[int] | None = None) -> torch.Tensor:
        """x: [B, l, C] → [B, l, C]; attn_bias, cache, scale_ends: see `SelfAttention.forward`."""
        gamma1, gamma2, scale1, scale2, shift1, shift2 = self.modulation(cond)
        h = self.ln_wo_grad(x) * (1 + scale1) + shift1
        x = x + self.drop_path(self.attn(h, attn_bias, cache, scale_ends) * gamma1)
        h = self.ln_wo_grad(x) * (1 + scale2) + shift2
        return x + self.drop_path(self.ffn(h) * gamma2)


class AdaLNBeforeHead(nn.Module):
    """Final modulated LayerNorm: LN(x)·(1 + scale) + shift with [scale, shift] = Linear(SiLU(cond))."""

    def __init__(self, embed_dim: int, cond_dim: int, norm_eps: float = 1e-6):
        super().__init__()
        self.ln_wo_grad = nn.LayerNorm(embed_dim, eps=norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * embed_dim))

    def forward(self, x: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        scale, shift = rearrange(self.ada_lin(cond_BD), "b (two c) -> b 1 two c", two=2).unbind(2)
        return self.ln_wo_grad(x) * (1 + scale) + shift


def scale_of_each_token(patch_nums: Sequence[int]) -> torch.Tensor:
    """Scale index k of every token of cat(r_1..r_K): int64 [L]."""
    return torch.cat([torch.full((pn * pn,), k, dtype=torch.long) for k, pn in enumerate(patch_nums)])


def block_causal_bias(patch_nums: Sequence[int]) -> torch.Tensor:
    """Additive attention bias [1, 1, L, L]: 0 where scale(query) ≥ scale(key), -inf otherwise."""
    scale = scale_of_each_token(patch_nums)
    visible = scale[:, None] >= scale[None, :]  # [L, L]
    bias = torch.zeros(visible.shape).masked_fill(~visible, float("-inf"))
    return rearrange(bias, "l m -> 1 1 l m")


class VAR(nn.Module):
    """Class-conditional VAR transformer; `forward(labels, x_in) -> logits [B, L, V]` (teacher forcing)."""

    def __init__(self, *,
                 vocab_size: int = 4096,               # V, codebook size of the VQVAE
                 z_channels: int = 32,                 # Cvae, codebook vector width
                 num_classes: int = 1000,              # class index num_classes is the null class
                 depth: int = 16,                      # number of blocks
                 embed_dim: int = 1024,                # C (= conditioning width D)
                 num_heads: int = 16,
                 mlp_ratio: float = 4.0,
                 drop_rate: float = 0.0,               # dropout after attention / FFN projections
                 attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0,          # stochastic depth, linear in the block index
                 norm_eps: float = 1e-6,
                 shared_aln: bool = False,             # one AdaLN projection for all blocks (d36)
                 cond_drop_rate: float = 0.1,          # stored only: label dropout is the caller's
                 attn_l2_norm: bool = True,            # cosine attention with learnable temperature
                 patch_nums: Sequence[int] = IMAGENET_PATCH_NUMS_256,
                 attention: str = "mask"):             # teacher-forced kernel: "mask" | "prefix" (module doc)
        super().__init__()
        self.attention = attention
        self.V, self.Cvae, self.num_classes = vocab_size, z_channels, num_classes
        self.depth, self.C, self.D, self.num_heads = depth, embed_dim, embed_dim, num_heads
        self.cond_drop_rate = cond_drop_rate
        self.patch_nums = tuple(int(pn) for pn in patch_nums)
        self.L = sum(pn * pn for pn in self.patch_nums)
        self.first_l = self.patch_nums[0] ** 2
        ends = list(itertools.accumulate(pn * pn for pn in self.patch_nums))
        self.begin_ends = [(end - pn * pn, end) for end, pn in zip(ends, self.patch_nums)]
        self.scale_ends = tuple(ends)
        self.num_stages_minus_1 = len(self.patch_nums) - 1
        # Input embeddings: codebook vectors, class (with null class), start token, position, scale.
        self.word_embed = nn.Linear(z_channels, embed_dim)
        self.class_emb = nn.Embedding(num_classes + 1, embed_dim)
        self.pos_start = nn.Parameter(torch.zeros(1, self.first_l, embed_dim))
        self.pos_1LC = nn.Parameter(torch.zeros(1, self.L, embed_dim))
        self.lvl_embed = nn.Embedding(len(self.patch_nums), embed_dim)
        # Backbone.
        self.shared_ada_lin = (nn.Sequential(nn.SiLU(), SharedAdaLin(embed_dim, 6 * embed_dim))
                               if shared_aln else nn.Identity())
        drop_path = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linspace(0, rate, depth)
        self.blocks = nn.ModuleList([
            AdaLNSelfAttn(embed_dim, embed_dim, num_heads, mlp_ratio=mlp_ratio, drop=drop_rate,
                          attn_drop=attn_drop_rate, drop_path=drop_path[i], norm_eps=norm_eps,
                          shared_aln=shared_aln, attn_l2_norm=attn_l2_norm)
            for i in range(depth)])
        # Block-causal mask over scales (persistent buffers, as in the official checkpoints).
        self.register_buffer("lvl_1L", rearrange(scale_of_each_token(self.patch_nums), "l -> 1 l"))
        self.register_buffer("attn_bias_for_masking", block_causal_bias(self.patch_nums))
        # Head.
        self.head_nm = AdaLNBeforeHead(embed_dim, embed_dim, norm_eps)
        self.head = nn.Linear(embed_dim, vocab_size)

    @property
    def attention(self) -> str:
        """Kernel of the teacher-forced forward: "mask" (one masked SDPA) or "prefix" (mask-free per scale)."""
        return self._attention

    @attention.setter
    def attention(self, kind: str) -> None:
        if kind not in ATTENTION_KINDS:
            raise ValueError(f"VAR: attention must be one of {list(ATTENTION_KINDS)}, found {kind!r}")
        self._attention = kind

    # -- input checks ------------------------------------------------------------------------------
    def check_labels(self, labels: torch.Tensor) -> None:
        """labels: int64 [B] in [0, num_classes]; num_classes is the null (unconditional) class."""
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.long or labels.ndim != 1:
            found = f"{labels.dtype} {list(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels)
            raise TypeError(f"VAR: labels must be an int64 tensor [B], found {found}")
        if labels.numel() and (labels.min() < 0 or labels.max() > self.num_classes):
            raise ValueError(f"VAR: labels must lie in [0, {self.num_classes}] ({self.num_classes} = null class), "
                             f"found [{int(labels.min())}, {int(labels.max())}]")

    def apply_uncond_mask(self, labels: torch.Tensor, uncond_mask: torch.Tensor | None) -> torch.Tensor:
        """Labels with rows where uncond_mask [B] (bool) is True replaced by the null class."""
        self.check_labels(labels)
        if uncond_mask is None:
            return labels
        if uncond_mask.dtype != torch.bool or uncond_mask.shape != labels.shape:
            raise ValueError(f"VAR: uncond_mask must be bool {list(labels.shape)}, "
                             f"found {uncond_mask.dtype} {list(uncond_mask.shape)}")
        return labels.masked_fill(uncond_mask, self.num_classes)

    # -- pieces shared by teacher forcing and sampling -----------------------------------------------
    def new_kv_cache(self) -> KVCache:
        """An empty KV cache, one `LayerCache` per block."""
        return [LayerCache() for _ in self.blocks]

    def scale_position_embedding(self) -> torch.Tensor:
        """lvl_embed(scale of token) + pos_1LC: [1, L, C]."""
        return self.lvl_embed(self.lvl_1L) + self.pos_1LC

    def start_tokens(self, cond_BD: torch.Tensor) -> torch.Tensor:
        """Start tokens cond + pos_start: [B, first_l, C]."""
        return cond_BD[:, None, :].expand(-1, self.first_l, -1) + self.pos_start

    def forward_blocks(self, x: torch.Tensor, cond_BD: torch.Tensor, attn_bias: torch.Tensor | None,
                       kv_cache: KVCache | None = None, scale_ends: Sequence[int] | None = None) -> torch.Tensor:
        """Run all blocks: x [B, l, C] → hidden [B, l, C]; with a cache, attend to the cached scales too;
        with `scale_ends` (and no bias), block-causal attention by mask-free SDPA per scale."""
        cond = self.shared_ada_lin(cond_BD)  # [B, D] or [B, 1, 6, C]
        for i, block in enumerate(self.blocks):
            x = block(x, cond, attn_bias, None if kv_cache is None else kv_cache[i], scale_ends)
        return x

    def get_logits(self, hidden: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        """Head: hidden [B, l, C] → float32 logits [B, l, V]."""
        return self.head(self.head_nm(hidden.float(), cond_BD).float()).float()

    # -- teacher forcing -------------------------------------------------------------------------------
    def forward(self, labels: torch.Tensor, x_BLCv_wo_first_l: torch.Tensor,
                uncond_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits [B, L, V] (fp32); deterministic in eval mode (no label dropout inside).

        labels: int64 [B] in [0, num_classes] (num_classes = null class); x_BLCv_wo_first_l: [B, L - first_l,
        Cvae], the VQVAE teacher-forcing input; uncond_mask: optional bool [B], True rows use the null class.
        """
        labels = self.apply_uncond_mask(labels, uncond_mask)
        expected = [labels.shape[0], self.L - self.first_l, self.Cvae]
        if x_BLCv_wo_first_l.ndim != 3 or list(x_BLCv_wo_first_l.shape) != expected:
            raise ValueError(f"VAR: teacher-forcing input must be {expected} ([B, L - first_l, Cvae]), "
                             f"found {list(x_BLCv_wo_first_l.shape)}")
        cond_BD = self.class_emb(labels)  # [B, D]
        tokens = torch.cat([self.start_tokens(cond_BD), self.word_embed(x_BLCv_wo_first_l.float())], dim=1)
        x = tokens + self.scale_position_embedding()  # [B, L, C]
        if self.attention == "prefix":
            hidden = self.forward_blocks(x, cond_BD, None, scale_ends=self.scale_ends)
        else:
            hidden = self.forward_blocks(x, cond_BD, self.attn_bias_for_masking)
        return self.get_logits(hidden, cond_BD)  # [B, L, V]


def init_weights(var: VAR, generator: torch.Generator | None = None, *, init_adaln: float = 0.5,
                 init_adaln_gamma: float = 1e-5, init_head: float = 0.02, init_std: float = -1.0) -> VAR:
    """From-scratch initialisation (VAR `init_weights`): truncated normal std √(1/(3C)) and scaled layers.

    Truncation is at ±2 (absolute). Randomness comes only from `generator`.
    """
    std = init_std if init_std >= 0 else math.sqrt(1 / var.C / 3)

    def trunc_normal(t: torch.Tensor) -> None:
        nn.init.trunc_normal_(t, std=std, a=-2.0, b=2.0, generator=generator)

    with torch.no_grad():
        for module in var.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                trunc_normal(module.weight)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
        for p in (var.pos_start, var.pos_1LC, var.lvl_embed.weight):
            trunc_normal(p)
        for block in var.blocks:
            if block.shared_aln:
                block.ada_gss.copy_(torch.randn(block.ada_gss.shape, generator=generator) / math.sqrt(var.C))
        var.head.weight.mul_(init_head)
        var.head.bias.zero_()
        var.head_nm.ada_lin[-1].weight.mul_(init_adaln)
        var.head_nm.ada_lin[-1].bias.zero_()
        depth_scale = math.sqrt(2 * var.depth)
        for block in var.blocks:
            block.attn.proj.weight.div_(depth_scale)
            block.ffn.fc2.weight.div_(depth_scale)
            ada = block.ada_gss.data[0, 0] if block.shared_aln else block.ada_lin[-1].weight.data.view(6, var.C, -1)
            ada[2:].mul_(init_adaln)
            ada[:2].mul_(init_adaln_gamma)
    return var


def var_from_official(init_kwargs: Mapping[str, Any], *, vocab_size: int = 4096, z_channels: int = 32) -> VAR:
    """Our VAR for the official `VAR(vae_local, **init_kwargs)` constructor arguments.

    `vocab_size` / `z_channels` are the VQVAE's V and Cvae (official: read from `vae_local`). The flash /
    fused kernel flags are accepted and ignored; unknown keys are an error. Weights are left at PyTorch's
    default init: load a state dict or call `init_weights`.
    """
    kwargs = {k: v for k, v in init_kwargs.items() if k not in IGNORED_OFFICIAL_KWARGS}
    if "vae_local" in kwargs:
        raise TypeError("var_from_official: pass the VQVAE's vocab_size / z_channels, not vae_local")
    accepted = [name for name in VAR.__init__.__kwdefaults__ if name not in ("vocab_size", "z_channels")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(f"var_from_official: unknown VAR arguments {unknown}; accepted: {accepted}")
    return VAR(vocab_size=vocab_size, z_channels=z_channels, **kwargs)


def official_var_kwargs(depth: int, *, shared_aln: bool = False, num_classes: int = 1000,
                        patch_nums: Sequence[int] = IMAGENET_PATCH_NUMS_256) -> dict[str, Any]:
    """The official `build_vae_var` VAR arguments for a depth: C = 64·depth, heads = depth, dpr = 0.1·depth/24."""
    return dict(num_classes=num_classes, depth=depth, embed_dim=64 * depth, num_heads=depth, mlp_ratio=4.0,
                drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.1 * depth / 24, norm_eps=1e-6,
                shared_aln=shared_aln, cond_drop_rate=0.1, attn_l2_norm=True, patch_nums=tuple(patch_nums),
                flash_if_available=True, fused_if_available=True)
