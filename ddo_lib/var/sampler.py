"""VAR next-scale sampling with classifier-free guidance and a KV cache (Tian et al. 2024, §3; VAR `autoregressive_infer_cfg`).

One transformer pass per scale k = 0..K−1 predicts the whole token map r_k. Guidance follows upstream:
t_k = cfg·k/(K−1) and logits = (1 + t_k)·cond − t_k·uncond, so **cfg = 0 is guidance-free** and cfg = 1
already ramps to 2·cond − uncond at the last scale. Then optional top-k / top-p masking and a categorical
draw. The conditional and unconditional halves share the guided history.

Randomness (see tests/fixtures/official/README.md §7):
- `g_seed`: one CPU/device generator for the whole batch, seeded once, exactly as upstream: labels (if not
  given) via `multinomial(uniform, B)`, then one `multinomial(softmax(logits).view(-1, V), 1)` per scale
  (equivalently an exponential race argmax p/q over [B·pn², V]); with `more_smooth`, a Gumbel draw after it.
- `seeds`: one generator per sample with the same draw order per row, so sample i depends on seed i only
  and equals the upstream sampler run with B = 1 and g_seed = seed i.
Returns the token maps (upstream returns only images), their per-token log-probs under the sampled
(guided, masked) distribution, and images when a VQVAE is given.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from einops import rearrange

from ddo_lib.var import vqvae as vq
from ddo_lib.var.transformer import VAR


class VARSamples(NamedTuple):
    """Output of `sample`."""

    tokens: list[torch.Tensor]  # per scale [B, pn²] int64
    labels: torch.Tensor  # [B] int64 (num_classes = null class)
    log_probs: torch.Tensor  # [B, L] fp32, log-prob of each drawn token under the guided, masked distribution
    f_hat: torch.Tensor  # [B, Cvae, h_K, w_K], the summed (φ-processed) codebook features
    images: torch.Tensor | None  # [B, 3, H, W] in [-1, 1] (decoded f̂), None when decode=False
    logits: list[torch.Tensor] | None  # per scale [B, pn², V] guided and masked logits, if record_logits


def guidance_ramp(cfg: float, num_scales: int) -> list[float]:
    """Upstream CFG strength per scale: t_k = cfg·(k/(K−1)) (0 at the 1×1 map, cfg at the last scale)."""
    if num_scales < 2:
        return [0.0] * num_scales
    return [cfg * (k / (num_scales - 1)) for k in range(num_scales)]


def guided_logits(logits_cond: torch.Tensor, logits_uncond: torch.Tensor, t: float) -> torch.Tensor:
    """CFG logits (1 + t)·cond − t·uncond; t = 0 returns the conditional logits."""
    return (1 + t) * logits_cond - t * logits_uncond


def top_k_top_p_filter(logits: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """Mask logits [..., V] to -inf outside the top-k and the nucleus (VAR sampling-helper semantics).

    top-k keeps values ≥ the k-th largest; top-p then sorts ascending and drops the tokens whose cumulative
    softmax is ≤ 1 − top_p, always keeping the largest. 0 disables a filter. Returns a new tensor.
    """
    if top_k < 0 or not 0.0 <= top_p <= 1.0:
        raise ValueError(f"top_k must be >= 0 and top_p in [0, 1], found top_k={top_k}, top_p={top_p}")
    if top_k > 0:
        kth_largest = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values.amin(dim=-1, keepdim=True)
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p > 0:
        sorted_logits, order = logits.sort(dim=-1, descending=False)
        drop_sorted = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
        drop_sorted[..., -1] = False
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return logits


class SamplingRandomness:
    """The sampler's random draws from one batch generator (`g_seed`) or one generator per row (`seeds`)."""

    def __init__(self, device: torch.device, *, g_seed: int | None = None, seeds: Sequence[int] | None = None):
        if (g_seed is None) == (seeds is None):
            raise ValueError("sample: give exactly one of g_seed (one generator for the batch) and seeds (per sample)")
        values = [g_seed] if seeds is None else [int(s) for s in seeds]
        if not values:
            raise ValueError("sample: seeds is empty")
        self.per_row = seeds is not None
        self.generators = [torch.Generator(device).manual_seed(int(v)) for v in values]

    def _rows(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Generator]]:
        """(x, generator) for the batch mode, (x[i:i+1], generator i) per row otherwise."""
        if not self.per_row:
            return [(x, self.generators[0])]
        if x.shape[0] != len(self.generators):
            raise ValueError(f"sample: batch {x.shape[0]} but {len(self.generators)} seeds")
        return [(x[i:i + 1], g) for i, g in enumerate(self.generators)]

    def labels(self, batch_size: int, num_classes: int, device: torch.device) -> torch.Tensor:
        """Uniform class labels [B] (upstream: multinomial over a uniform [1, num_classes] row)."""
        uniform = torch.full((1, num_classes), 1.0 / num_classes, device=device)
        if not self.per_row:
            return torch.multinomial(uniform, batch_size, replacement=True, generator=self.generators[0])[0]
        return torch.cat([torch.multinomial(uniform, 1, replacement=True, generator=g)[0] for g in self.generators])

    def categorical(self, logits: torch.Tensor) -> torch.Tensor:
        """One draw from softmax(logits) [B, l, V] per token: int64 [B, l]."""
        draws = [torch.multinomial(rows.softmax(dim=-1).reshape(-1, rows.shape[-1]), 1, replacement=True,
                                   generator=g).reshape(rows.shape[:2]) for rows, g in self._rows(logits)]
        return torch.cat(draws)

    def gumbel_softmax(self, logits: torch.Tensor, tau: float) -> torch.Tensor:
        """Soft Gumbel-softmax weights [B, l, V] with Gumbel noise −log(Exp(1)) from the generators."""
        noise = [-torch.empty_like(rows).exponential_(generator=g).log() for rows, g in self._rows(logits)]
        return ((logits + torch.cat(noise)) / tau).softmax(dim=-1)


def _resolve_labels(var: VAR, labels: torch.Tensor | int | None, batch_size: int | None,
                    randomness: SamplingRandomness, device: torch.device) -> torch.Tensor:
    """labels: int64 [B]; an int for every sample (negative = null class); None = uniform draw."""
    if isinstance(labels, torch.Tensor):
        var.check_labels(labels)
        if batch_size is not None and labels.shape[0] != batch_size:
            raise ValueError(f"sample: batch_size {batch_size} but {labels.shape[0]} labels")
        return labels.to(device)
    if batch_size is None or batch_size < 1:
        raise ValueError(f"sample: batch_size must be a positive int when labels is not a tensor, found {batch_size}")
    if labels is None:
        return randomness.labels(batch_size, var.num_classes, device)
    if not isinstance(labels, int) or labels >= var.num_classes:
        raise ValueError(f"sample: labels must be a tensor, None or an int < {var.num_classes}, found {labels!r}")
    return torch.full((batch_size,), var.num_classes if labels < 0 else labels, dtype=torch.long, device=device)


def check_compatible(var: VAR, vqvae: torch.nn.Module) -> None:
    """The VQVAE must share the transformer's scales, vocabulary and code width."""
    found = (tuple(vqvae.v_patch_nums), vqvae.vocab_size, vqvae.Cvae)
    if found != (var.patch_nums, var.V, var.Cvae):
        raise ValueError(f"VAR/VQVAE mismatch: transformer has (patch_nums, V, Cvae) = "
                         f"{(var.patch_nums, var.V, var.Cvae)}, VQVAE has {found}")


@torch.no_grad()
def sample(var: VAR,
           vqvae: torch.nn.Module,
           *,
           labels: torch.Tensor | int | None = None,  # [B] int64; int for all (negative = null); None = draw
           batch_size: int | None = None,             # needed when labels is not a tensor and seeds not given
           g_seed: int | None = None,                 # one generator for the batch (upstream semantics)
           seeds: Sequence[int] | None = None,        # one generator per sample
           cfg: float = 1.5,                          # guidance ramp end; 0 = guidance-free
           top_k: int = 0,                            # 0 = off
           top_p: float = 0.0,                        # 0 = off
           more_smooth: bool = False,                 # Gumbel-softmax f̂ for visualisation (not for FID)
           use_kv_cache: bool = True,                 # False re-runs all earlier scales (same result)
           decode: bool = True,                       # decode f̂ to images
           record_logits: bool = False) -> VARSamples:  # keep the guided, masked logits per scale
    """Next-scale sampling with upstream CFG / top-k / top-p; returns tokens, log-probs and images."""
    check_compatible(var, vqvae)
    device = var.pos_1LC.device
    randomness = SamplingRandomness(device, g_seed=g_seed, seeds=seeds)
    if seeds is not None and batch_size is None and not isinstance(labels, torch.Tensor):
        batch_size = len(seeds)
    labels = _resolve_labels(var, labels, batch_size, randomness, device)
    B = labels.shape[0]
    if seeds is not None and len(seeds) != B:
        raise ValueError(f"sample: {len(seeds)} seeds for a batch of {B}")
    guide = cfg != 0
    # Conditioning: [labels; null] when guided, so both halves run in one batch.
    cond_labels = torch.cat([labels, torch.full_like(labels, var.num_classes)]) if guide else labels
    cond_BD = var.class_emb(cond_labels)  # [B or 2B, D]
    scale_pos = var.scale_position_embedding()  # [1, L, C]
    next_input = var.start_tokens(cond_BD) + scale_pos[:, :var.first_l]  # [B or 2B, first_l, C]
    kv_cache = var.new_kv_cache() if use_kv_cache else None
    inputs_so_far: list[torch.Tensor] = []
    f_hat = vq.empty_f_hat(vqvae, B)  # [B, Cvae, h_K, w_K]
    tokens, log_probs, recorded = [], [], []
    for si, ((begin, end), t) in enumerate(zip(var.begin_ends, guidance_ramp(cfg, len(var.patch_nums)))):
        pn = var.patch_nums[si]
        # Transformer pass for this scale (cached keys/values or the whole prefix again).
        if kv_cache is not None:
            hidden = var.forward_blocks(next_input, cond_BD, None, kv_cache)  # [., pn², C]
        else:
            inputs_so_far.append(next_input)
            prefix = torch.cat(inputs_so_far, dim=1)  # [., end, C]
            bias = var.attn_bias_for_masking[:, :, :end, :end]
            hidden = var.forward_blocks(prefix, cond_BD, bias)[:, begin:end]
        logits = var.get_logits(hidden, cond_BD)  # [B or 2B, pn², V]
        # Guidance, filtering, draw.
        if guide:
            logits = guided_logits(logits[:B], logits[B:], t)
        logits = top_k_top_p_filter(logits, top_k, top_p)
        idx = randomness.categorical(logits)  # [B, pn²]
        if record_logits:
            recorded.append(logits)
        tokens.append(idx)
        log_probs.append(logits.log_softmax(dim=-1).gather(-1, idx[..., None])[..., 0])
        # Codebook vectors of this scale → f̂ and the next scale's input.
        if more_smooth:
            ratio = si / max(var.num_stages_minus_1, 1)
            weights = randomness.gumbel_softmax(logits * (1 + ratio), tau=max(0.27 * (1 - ratio * 0.95), 0.005))
            h = weights @ vq.codebook(vqvae)  # [B, pn², Cvae]
        else:
            h = vq.codebook(vqvae)[idx]  # [B, pn², Cvae]
        h = rearrange(h, "b (h w) c -> b c h w", h=pn, w=pn)
        f_hat, next_map = vq.next_autoregressive_input(vqvae, si, f_hat, h)
        if si < var.num_stages_minus_1:
            next_tokens = var.word_embed(rearrange(next_map, "b c h w -> b (h w) c"))
            next_input = next_tokens + scale_pos[:, end:end + var.patch_nums[si + 1] ** 2]
            if guide:
                next_input = torch.cat([next_input, next_input])
    images = vq.f_hat_to_image(vqvae, f_hat) if decode else None
    return VARSamples(tokens, labels, torch.cat(log_probs, dim=1), f_hat, images,
                      recorded if record_logits else None)
