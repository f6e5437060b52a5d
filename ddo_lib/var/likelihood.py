"""Exact VAR sequence log-likelihoods and the DDO log-ratio (Tian et al. 2024, §3; Zheng et al. 2025, Eq. 1).

Next-scale prediction factorises over scales and, given earlier scales, over the tokens of a scale, so
log p(r_1..r_K | c) = Σ over all L tokens of log_softmax(logits)[token], one teacher-forced pass, in fp32.
"log p(x)" of an image means log p(tokens(x) | c) for the deterministic VQVAE tokenisation.

Label dropout is explicit everywhere: `uncond_mask` ([B] bool, True = null class) is applied identically
to θ and ref, so Δ = log p_θ − log p_ref is a deterministic function of (x, c, mask).
`guided_token_log_probs` scores tokens under the sampler's CFG / top-k / top-p distribution
(the same numbers `sampler.sample` records as `log_probs`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ddo_lib.var.sampler import (
    check_compatible,
    guidance_ramp,
    guided_logits,
    top_k_top_p_filter,
)
from ddo_lib.var.transformer import VAR
from ddo_lib.var.vqvae import image_to_tokens, tokens_to_teacher_forcing_input

Tokens = torch.Tensor | Sequence[torch.Tensor]  # [B, L] int64, or per-scale [B, pn²] int64


def concat_tokens(var: VAR, tokens: Tokens, batch_size: int | None = None) -> torch.Tensor:
    """Per-scale token maps (or an already concatenated tensor) → int64 [B, L], with checks."""
    if not isinstance(tokens, torch.Tensor):
        tokens = list(tokens)
        lengths = [int(t.shape[-1]) for t in tokens]
        expected = [pn * pn for pn in var.patch_nums]
        if lengths != expected:
            raise ValueError(f"VAR tokens: expected per-scale lengths {expected}, found {lengths}")
        tokens = torch.cat(tokens, dim=1)
    if tokens.dtype != torch.long or tokens.ndim != 2 or tokens.shape[1] != var.L:
        raise ValueError(f"VAR tokens: expected int64 [B, {var.L}], found {tokens.dtype} {list(tokens.shape)}")
    if batch_size is not None and tokens.shape[0] != batch_size:
        raise ValueError(f"VAR tokens: expected batch {batch_size}, found {tokens.shape[0]}")
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= var.V):
        raise ValueError(f"VAR tokens: indices must lie in [0, {var.V}), found "
                         f"[{int(tokens.min())}, {int(tokens.max())}]")
    return tokens


def gather_log_probs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits)[token] in fp32: logits [B, L, V], tokens [B, L] → [B, L]."""
    log_probs = logits.float().log_softmax(dim=-1)  # [B, L, V]
    return log_probs.gather(-1, tokens[..., None])[..., 0]  # [B, L]


def token_log_probs(var: VAR, labels: torch.Tensor, tokens: Tokens, teacher_forcing_input: torch.Tensor,
                    uncond_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token log p(r_i | r_<scale(i), c), fp32 [B, L] (teacher forcing; no label dropout inside).

    labels: int64 [B] (num_classes = null class); tokens: [B, L] or per-scale maps; teacher_forcing_input:
    [B, L - first_l, Cvae] from the same tokens; uncond_mask: optional bool [B], True rows use the null class.
    """
    tokens = concat_tokens(var, tokens, labels.shape[0])
    logits = var(labels, teacher_forcing_input, uncond_mask=uncond_mask)  # [B, L, V]
    return gather_log_probs(logits, tokens)


def log_likelihood_from_tokens(var: VAR, labels: torch.Tensor, tokens: Tokens,
                               teacher_forcing_input: torch.Tensor,
                               uncond_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Exact log p(tokens | c) = Σ_L token log-probs, fp32 [B]."""
    return token_log_probs(var, labels, tokens, teacher_forcing_input, uncond_mask).sum(dim=1)


def log_likelihood(var: VAR, vqvae: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                   uncond_mask: torch.Tensor | None = None) -> torch.Tensor:
    """log p(tokens(x) | c) for images x [B, 3, H, W] in [-1, 1]: encode with the VQVAE, then teacher-force. fp32 [B]."""
    if images.ndim != 4 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"log_likelihood: images must be [B, 3, H, W] with B = {labels.shape[0]} labels, "
                         f"found {list(images.shape)}")
    check_compatible(var, vqvae)
    with torch.no_grad():
        tokens = image_to_tokens(vqvae, images)  # deterministic greedy multi-scale quantisation
        x_in = tokens_to_teacher_forcing_input(vqvae, tokens)  # [B, L - first_l, Cvae]
    return log_likelihood_from_tokens(var, labels, tokens, x_in, uncond_mask)


def var_log_ratio(net: VAR, ref: VAR, labels: torch.Tensor, tokens: Tokens, teacher_forcing_input: torch.Tensor,
                  uncond_mask: torch.Tensor | None = None) -> torch.Tensor:
    """DDO log-ratio Δ = log p_θ(x|c) − log p_ref(x|c), fp32 [B]; gradients flow into `net` only.

    Both models see the same labels, null-class mask, tokens and teacher-forcing input. `ref` runs under
    no_grad in whatever mode the caller set (eval for DDO). θ = ref gives exactly 0.
    """
    logp_net = log_likelihood_from_tokens(net, labels, tokens, teacher_forcing_input, uncond_mask)
    with torch.no_grad():
        logp_ref = log_likelihood_from_tokens(ref, labels, tokens, teacher_forcing_input, uncond_mask)
    return logp_net - logp_ref


def guided_token_log_probs(var: VAR, labels: torch.Tensor, tokens: Tokens, teacher_forcing_input: torch.Tensor,
                           *, cfg: float = 0.0, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """Per-token log-probs [B, L] under the sampler's distribution: CFG ramp, then top-k/top-p, renormalised.

    Two teacher-forced passes (labels and the null class); masked-out tokens get -inf.
    """
    tokens = concat_tokens(var, tokens, labels.shape[0])
    logits_cond = var(labels, teacher_forcing_input)  # [B, L, V]
    null = torch.full_like(labels, var.num_classes)
    logits_uncond = var(null, teacher_forcing_input) if cfg != 0 else logits_cond
    pieces = []
    for (begin, end), t in zip(var.begin_ends, guidance_ramp(cfg, len(var.patch_nums))):
        guided = guided_logits(logits_cond[:, begin:end], logits_uncond[:, begin:end], t)
        pieces.append(top_k_top_p_filter(guided, top_k, top_p))
    return gather_log_probs(torch.cat(pieces, dim=1), tokens)
