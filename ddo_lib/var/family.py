"""The VAR family behind the DDO generator protocol (Zheng et al. 2025, Eq. 1 and §4 "VAR"; NVlabs/DDO VAR trainer).

For an autoregressive model the log-ratio is exact: Δ = log p_θ(r(x) | c) − log p_ref(r(x) | c), the sum
over all L tokens of the teacher-forced log-prob differences, where r(x) are the multi-scale tokens of
x under the frozen tokenizer. Real images and the reference's (decoded) fakes are both re-encoded, the
official default (NVlabs/DDO issue #5); `DDOConfig.fake_tokens='sampled'` instead scores the fakes' token
indices as the reference drew them (`sample_with_tokens`, draws['tokens']), so a fake's Δ is exactly the
log-ratio of the sequence the reference generated, free of the tokenizer's re-encoding error. Label
dropout follows the official recipe: one mask per row, drawn by `draw`, shared by θ and ref and by the
real and fake row of a pair; masked rows are conditioned on the null class, and `row_weights` gives them
fake weight 0 and real weight max(α, 1) (the unconditional part only receives the likelihood-raising
real term).

Fakes for DDO use `cfg = 1.0` by default, mirroring the official trainer. Upstream VAR guidance ramps
t_k = cfg·k/(K−1), so cfg = 1 is *mild guidance* at the last scale, not guidance-free; cfg = 0 is the
truly guidance-free (paper-faithful) choice (official VAR `models/var.py`, `autoregressive_infer_cfg`).
"""
from __future__ import annotations

from typing import Sequence

import torch

from ddo_lib.data import to_uint8
from ddo_lib.family import stochastic_modules
from ddo_lib.objective import var_row_weights
from ddo_lib.var.likelihood import concat_tokens, gather_log_probs
from ddo_lib.var.sampler import check_compatible
from ddo_lib.var.sampler import sample as var_sample
from ddo_lib.var.transformer import VAR
from ddo_lib.var.vqvae import image_to_tokens, tokens_to_teacher_forcing_input

UNCOND_RATE = 0.1  # official label-dropout rate in DDO finetuning (CCA uncond_ratio; NVlabs/DDO VAR trainer)


def unwrap(net: torch.nn.Module) -> VAR:
    """The VAR module inside a DistributedDataParallel wrapper (or the net itself)."""
    return getattr(net, "module", net)


def _check_deterministic(net: torch.nn.Module) -> None:
    """A training-mode θ with drop-path or attention dropout would make Δ random: refuse it."""
    if net.training and stochastic_modules(net):
        raise ValueError(f"VAR DDO: θ has drop-path / dropout > 0 in train mode ({stochastic_modules(net)[:3]}); "
                         "the log-ratio must be deterministic (call ddo_lib.family.disable_dropout first)")


def class_indices(labels: torch.Tensor | None, batch_size: int, num_classes: int) -> torch.Tensor:
    """Trainer labels (one-hot float [B, num_classes], or None) → int64 [B]; None → the null class."""
    if labels is None:
        return torch.full((batch_size,), num_classes, dtype=torch.long)
    if labels.ndim != 2 or tuple(labels.shape) != (batch_size, num_classes):
        raise ValueError(f"VAR family: expected one-hot labels [{batch_size}, {num_classes}], "
                         f"found {list(labels.shape)}")
    if not torch.equal(labels.sum(dim=1), torch.ones(batch_size, dtype=labels.dtype, device=labels.device)):
        raise ValueError("VAR family: labels must be one-hot rows (each summing to 1)")
    return labels.argmax(dim=1)


class VARFamily:
    """VAR transformers with a frozen multi-scale VQ tokenizer; exact teacher-forced log-ratios."""

    name = "var"

    def __init__(self, tokenizer: torch.nn.Module, *,
                 uncond_rate: float = UNCOND_RATE,  # label-dropout rate of DDO / MLE rows (0 for unlabelled data)
                 cfg: float = 1.0,                 # guidance of the fakes / samples; 1.0 = official, 0 = none
                 top_k: int = 0,                   # 0 = off (DDO results use no top-k/top-p)
                 top_p: float = 0.0,               # 0 = off
                 batch_size: int = 256):           # sampling batch
        if not 0.0 <= uncond_rate < 1.0:
            raise ValueError(f"VAR family: uncond_rate must lie in [0, 1), found {uncond_rate}")
        self.tokenizer = tokenizer.eval().requires_grad_(False)
        self.uncond_rate, self.cfg, self.top_k, self.top_p = uncond_rate, cfg, top_k, top_p
        self.batch_size = batch_size

    # -- tokens ------------------------------------------------------------------------------------------
    def _follow(self, device: torch.device) -> None:
        """Keep the frozen tokenizer on the device of the networks it serves (moved once, in place)."""
        parameter = next(self.tokenizer.parameters(), None)
        if parameter is not None and parameter.device != device:
            self.tokenizer.to(device)

    @torch.no_grad()
    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen tokenizer: images [B, C, H, W] in [−1, 1] → (tokens int64 [B, L], input [B, L − 1, Cvae]).

        Always in fp32, also inside a bf16 autocast of the training step: the codebook argmin must not
        depend on the training precision (the tokens are the data)."""
        self._follow(x.device)
        with torch.autocast(device_type=x.device.type, enabled=False):
            maps = image_to_tokens(self.tokenizer, x.float())
            return torch.cat(maps, dim=1), tokens_to_teacher_forcing_input(self.tokenizer, maps)

    def sequence_log_prob(self, net: torch.nn.Module, labels: torch.Tensor, tokens: torch.Tensor,
                          teacher_forcing_input: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        """Exact log p(tokens | c) in fp32 [B]; rows with uncond [B] True use the null class. DDP-safe."""
        var = unwrap(net)
        tokens = concat_tokens(var, tokens, labels.shape[0])
        logits = net(labels, teacher_forcing_input, uncond_mask=uncond)    # [B, L, V]
        return gather_log_probs(logits, tokens).sum(dim=1)

    def log_ratio_tokens(self, net: torch.nn.Module, ref: torch.nn.Module, labels: torch.Tensor,
                         tokens: torch.Tensor, teacher_forcing_input: torch.Tensor,
                         uncond: torch.Tensor) -> torch.Tensor:
        """Δ = log p_θ − log p_ref on given tokens, fp32 [B]; ref under no_grad with the same mask."""
        _check_deterministic(net)
        logp_net = self.sequence_log_prob(net, labels, tokens, teacher_forcing_input, uncond)
        with torch.no_grad():
            logp_ref = self.sequence_log_prob(ref, labels, tokens, teacher_forcing_input, uncond)
        return logp_net - logp_ref

    def split_scales(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Flat tokens int64 [B, L] → per-scale maps [B, pn²] (the tokenizer's v_patch_nums)."""
        sizes = [pn * pn for pn in self.tokenizer.v_patch_nums]
        if tokens.ndim != 2 or tokens.shape[1] != sum(sizes):
            raise ValueError(f"VAR family: expected tokens [B, {sum(sizes)}], found {list(tokens.shape)}")
        if int(tokens.min()) < 0 or int(tokens.max()) >= self.tokenizer.vocab_size:
            raise ValueError(f"VAR family: token indices must lie in [0, {self.tokenizer.vocab_size})")
        return list(tokens.split(sizes, dim=1))

    @torch.no_grad()
    def _tokens_with_overrides(self, x: torch.Tensor, given: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """Tokens of x [B, C, H, W] (re-encoded), except rows where `given` [B, L] is ≥ 0: those are scored
        as given (the sampled indices of a fake, `fake_tokens='sampled'`); only the −1 rows go through the
        tokenizer."""
        if given is None:
            return self.tokens(x)
        length = sum(pn * pn for pn in self.tokenizer.v_patch_nums)
        given = given.to(x.device)
        if given.dtype != torch.long or tuple(given.shape) != (x.shape[0], length):
            raise ValueError(f"VAR family: draws['tokens'] must be int64 [{x.shape[0]}, {length}], "
                             f"found {given.dtype} {list(given.shape)}")
        keep = given[:, 0] >= 0                                               # [B]
        if bool((given[keep] < 0).any()) or bool((given[~keep] >= 0).any()):
            raise ValueError("VAR family: draws['tokens'] rows must be all ≥ 0 (scored) or all −1 (re-encode)")
        tokens = given.clone()
        if bool((~keep).any()):
            tokens[~keep] = self.tokens(x[~keep])[0]                          # [B − kept, L]
        return tokens, tokens_to_teacher_forcing_input(self.tokenizer, self.split_scales(tokens))

    def _inputs(self, net, x, labels, draws) -> tuple[torch.Tensor, ...]:
        """(int labels [B], tokens [B, L], teacher-forcing input, uncond [B]) for a trainer batch.

        draws['tokens'] (optional, int64 [B, L]): rows ≥ 0 are scored as given instead of re-encoding x."""
        var = unwrap(net)
        check_compatible(var, self.tokenizer)
        self._follow(x.device)
        uncond = draws["uncond"].to(x.device)
        if uncond.dtype != torch.bool or tuple(uncond.shape) != (x.shape[0],):
            raise ValueError(f"VAR family: draws['uncond'] must be bool [{x.shape[0]}], "
                             f"found {uncond.dtype} {list(uncond.shape)}")
        if labels is None and bool(uncond.any()):  # unlabelled rows all use the null class already
            raise ValueError("VAR family: unlabelled data with label dropout; use uncond_rate=0")
        classes = class_indices(labels, x.shape[0], var.num_classes).to(x.device)
        return (classes, *self._tokens_with_overrides(x, draws.get("tokens")), uncond)

    # -- protocol ----------------------------------------------------------------------------------------
    def draw(self, generator: torch.Generator, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The label-dropout mask of a batch: uncond bool [B] (True = null class), from `generator` only."""
        return dict(uncond=(torch.rand(x.shape[0], generator=generator) < self.uncond_rate).to(x.device))

    def log_ratio(self, net, ref, x, labels, draws) -> torch.Tensor:
        """Exact log p_θ(x|c) − log p_ref(x|c) of re-encoded images x [B, C, H, W]: fp32 [B]."""
        return self.log_ratio_tokens(net, ref, *self._inputs(net, x, labels, draws))

    def mle_loss(self, net, x, labels, draws) -> torch.Tensor:
        """−log p_θ(x|c) per row [B] (teacher-forced CE summed over tokens; same label dropout as DDO)."""
        return -self.sequence_log_prob(net, *self._inputs(net, x, labels, draws))

    def row_weights(self, draws: dict[str, torch.Tensor], alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(w_real [B], w_fake [B]): label-dropped rows get max(α, 1) and 0, others 1 and 1 (NVlabs/DDO VAR trainer)."""
        return var_row_weights(draws["uncond"], alpha)

    @torch.no_grad()
    def sample(self, net, seeds: Sequence[int], labels: torch.Tensor | None, **sampler) -> torch.Tensor:
        """uint8 [N, C, H, W]; image i depends only on seed i. labels int [N] or None (null class).

        `sampler` may override cfg, top_k, top_p and batch_size of this family.
        """
        return self.sample_with_tokens(net, seeds, labels, **sampler)[0]

    @torch.no_grad()
    def sample_with_tokens(self, net, seeds: Sequence[int], labels: torch.Tensor | None,
                           **sampler) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 images [N, C, H, W], sampled token indices int64 [N, L]); as `sample`.

        The tokens are the indices as drawn; re-encoding the decoded images need not return them.
        """
        options = dict(cfg=self.cfg, top_k=self.top_k, top_p=self.top_p, batch_size=self.batch_size)
        unknown = sorted(set(sampler) - set(options))
        if unknown:
            raise ValueError(f"VAR family: unknown sampler options {unknown}; accepted: {sorted(options)}")
        options.update(sampler)
        var = unwrap(net)
        seeds = [int(s) for s in seeds]
        device = var.pos_1LC.device
        self._follow(device)
        if labels is None:
            labels = torch.full((len(seeds),), var.num_classes, dtype=torch.long)
        labels = torch.as_tensor(labels, dtype=torch.long)
        if labels.shape != (len(seeds),):
            raise ValueError(f"VAR family: expected {len(seeds)} labels, found {list(labels.shape)}")
        images, tokens = [], []
        for start in range(0, len(seeds), options["batch_size"]):
            stop = start + options["batch_size"]
            out = var_sample(var, self.tokenizer, labels=labels[start:stop].to(device), seeds=seeds[start:stop],
                             cfg=options["cfg"], top_k=options["top_k"], top_p=options["top_p"])
            images.append(to_uint8(out.images).cpu())
            tokens.append(torch.cat(out.tokens, dim=1).cpu())
        if not images:
            raise ValueError("VAR family: no seeds to sample")
        return torch.cat(images), torch.cat(tokens)                          # [N, C, H, W], [N, L]
