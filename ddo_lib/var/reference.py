"""A tiny VAR reference for the 8×8 digits, pretrained by maximum likelihood (Tian et al. 2024, §3–4).

Two stages, as in VAR: (1) a multi-scale residual VQ tokenizer (VAR Alg. 1–2 quantiser on a small
LDM-style conv encoder/decoder) trained with pixel MSE + the VQ codebook/commitment loss
(van den Oord et al. 2017, Eq. 3) through the straight-through estimator, then frozen; (2) the VAR
transformer trained with teacher-forced cross-entropy on the frozen tokens, with 10 % label dropout to
the null class (for CFG), residual/attention dropout (1 437 training digits are memorised without it)
and an EMA of the weights. The EMA transformer, rebuilt without dropout modules, is the DDO reference.
Default config, 1 CPU thread: ~135 s; held-out NLL 52.5 nats/image = 2.52 bits/token (L = 30).

`load_official` instead reads a released pair (`var_d16.pth` + `vae_ch160v4096z32.pth`, `ddo_lib.var.official`).

A `VARReference` is a `ddo_lib.reference.Reference` (net = the EMA VAR transformer, class_name "VAR")
plus the frozen tokenizer, its class and its constructor arguments. On disk it is one `torch.save` dict of
plain tensors and Python values, read back with `weights_only=True`:

    {"format": FORMAT, "class_name": "VAR", "init_kwargs": {...}, "state_dict": {...},
     "tokenizer_class": "SmallVQVAE" | "VQVAE", "tokenizer_kwargs": {...}, "tokenizer_state_dict": {...},
     "meta": {...}}

Files of format `ddo_lib.var/1` (no `tokenizer_class`: always the small tokenizer) still load.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import pathlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ddo_lib import checkpoint as checkpoint_lib
from ddo_lib import data as data_lib
from ddo_lib.optim import ema_beta, make_ema, scheduled_lr, update_ema
from ddo_lib.reference import Reference, plain
from ddo_lib.seeds import STREAM_CODE_RESET, STREAM_VAR_PRETRAIN, step_generator
from ddo_lib.var.family import VARFamily
from ddo_lib.var.likelihood import log_likelihood_from_tokens
from ddo_lib.var.transformer import VAR, init_weights
from ddo_lib.var.vae_blocks import Decoder, Encoder
from ddo_lib.var import official
from ddo_lib.var.official import load_strict
from ddo_lib.var.vqvae import (
    MultiScaleQuantizer,
    image_to_tokens,
    tokens_to_teacher_forcing_input,
    vqvae_from_official,
)

log = logging.getLogger(__name__)

FORMAT = "ddo_lib.var/2"
FORMAT_V1 = "ddo_lib.var/1"  # before the tokenizer class was recorded (always SmallVQVAE)
KEYS = ("format", "class_name", "init_kwargs", "state_dict", "tokenizer_class", "tokenizer_kwargs",
        "tokenizer_state_dict", "meta")


@dataclasses.dataclass(frozen=True)
class VARReferenceConfig:
    """Tiny VAR reference on the digits: tokenizer, then transformer (params.yaml section `var_reference`);
    or, with `checkpoint` and `vqvae`, the released VAR pair loaded as it is (every other field ignored)."""

    checkpoint: str | None = None               # official var_d*.pth (plain state dict); None = pretrain here
    vqvae: str | None = None                    # its tokenizer, vae_ch160v4096z32.pth (needed with checkpoint)
    checkpoint_depth: int | None = None         # None: read from the checkpoint; a number is checked against it
    # Tokenizer (multi-scale residual VQ-VAE).
    tokenizer_channels: int = 32                # encoder/decoder base width (multiple of 32, GroupNorm)
    tokenizer_ch_mult: tuple[int, ...] = (1, 2)  # width multipliers; downsampling 2^(len − 1); extended with
                                                # the last one for larger images (`follow_resolution`)
    tokenizer_res_blocks: int = 1               # res blocks per level (decoder: + 1)
    z_channels: int = 16                        # Cvae, code width
    vocab_size: int = 128                       # V, codebook size
    patch_nums: tuple[int, ...] = (1, 2, 3, 4)  # token-map sizes; the last equals the latent size
    tokenizer_steps: int = 400                  # Adam steps
    tokenizer_lr: float = 2e-3
    tokenizer_batch_size: int = 64
    # Transformer.
    depth: int = 3                              # blocks
    embed_dim: int = 96                         # C
    num_heads: int = 3
    steps: int = 800                            # AdamW steps (held-out NLL is flat from ~600)
    lr: float = 2e-3                            # peak learning rate
    lr_warmup_steps: int = 50                   # linear warm-up, then cosine to 10 % of lr
    batch_size: int = 64
    weight_decay: float = 0.05                  # on matrices only (VAR: not on biases, norms, positions)
    dropout: float = 0.25                       # pretraining only: residual + attention dropout (0 in the reference)
    ema_halflife_images: int = 5000
    label_dropout: float = 0.1                  # VAR cond_drop_rate: rows trained on the null class
    seed: int = 0
    log_every: int = 50

    def __post_init__(self):
        if (self.checkpoint is None) != (self.vqvae is None):
            raise ValueError("var_reference: an official VAR needs both `checkpoint` (var_d*.pth) and `vqvae` "
                             f"(vae_ch160v4096z32.pth); found checkpoint={self.checkpoint!r}, vqvae={self.vqvae!r}")

    def smoke(self) -> "VARReferenceConfig":
        return dataclasses.replace(self, tokenizer_steps=20, tokenizer_batch_size=16, steps=20, batch_size=16,
                                   lr_warmup_steps=5, depth=1, embed_dim=32, num_heads=2, log_every=5)


# ---------------------------------------------------------------------------------------------- tokenizer
class SmallVQVAE(nn.Module):
    """VAR's multi-scale VQ tokenizer (vqvae.VQVAE) with a configurable encoder for small images.

    Same quantiser (`MultiScaleQuantizer`) and the same interface as `vqvae.VQVAE` (encode, decode,
    quantize, v_patch_nums, vocab_size, Cvae), so `image_to_tokens`, `tokens_to_teacher_forcing_input`
    and `ddo_lib.var.sample` accept it. Images [B, in_channels, S, S] in [−1, 1], S = 2^(len(ch_mult)−1)·pn_K.
    """

    def __init__(self, *,
                 in_channels: int = 1,                   # image channels
                 ch: int = 32,                           # base width (multiple of 32)
                 ch_mult: Sequence[int] = (1, 2),        # width multipliers per level
                 num_res_blocks: int = 1,                # per encoder level (decoder: + 1)
                 z_channels: int = 16,                   # Cvae
                 vocab_size: int = 128,                  # V
                 patch_nums: Sequence[int] = (1, 2, 3, 4),
                 beta: float = 0.25,                     # commitment weight
                 quant_resi: float = 0.5,                # φ mixing ratio
                 share_quant_resi: int = 4):             # number of shared φ
        super().__init__()
        blocks = dict(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks, dropout=0.0,
                      in_channels=in_channels, z_channels=z_channels, using_sa=True, using_mid_sa=True)
        self.encoder = Encoder(double_z=False, **blocks)
        self.decoder = Decoder(**blocks)
        self.quantize = MultiScaleQuantizer(vocab_size, z_channels, beta=beta, v_patch_nums=tuple(patch_nums),
                                            quant_resi=quant_resi, share_quant_resi=share_quant_resi)
        self.quant_conv = nn.Conv2d(z_channels, z_channels, 3, padding=1)
        self.post_quant_conv = nn.Conv2d(z_channels, z_channels, 3, padding=1)
        self.in_channels, self.Cvae, self.vocab_size = in_channels, z_channels, vocab_size
        self.downsample = 2 ** (len(ch_mult) - 1)

    @property
    def v_patch_nums(self) -> tuple[int, ...]:
        return self.quantize.v_patch_nums

    @property
    def image_size(self) -> int:
        return self.downsample * self.v_patch_nums[-1]

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """f = quant_conv(encoder(x)): [B, in_channels, S, S] → [B, Cvae, pn_K, pn_K]."""
        expected = [self.in_channels, self.image_size, self.image_size]
        if images.ndim != 4 or list(images.shape[1:]) != expected or not images.is_floating_point():
            raise ValueError(f"tokenizer: expected float images [B, {', '.join(map(str, expected))}] in [-1, 1], "
                             f"found {images.dtype} {list(images.shape)}")
        return self.quant_conv(self.encoder(images))

    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        """decoder(post_quant_conv(f̂)) clamped to [−1, 1]: [B, Cvae, pn_K, pn_K] → [B, in_channels, S, S]."""
        return self.decoder(self.post_quant_conv(f_hat)).clamp(-1, 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training pass: (reconstruction via the straight-through f̂, VQ loss [])."""
        f_hat, vq_loss = self.quantize(self.encode(images))
        return self.decoder(self.post_quant_conv(f_hat)), vq_loss


def follow_resolution(ch_mult: Sequence[int], patch_nums: Sequence[int], resolution: int) -> tuple[int, ...]:
    """The tokenizer's width multipliers for `resolution`-px images: one level per halving from the image to
    the last token map (2^(levels − 1)·patch_nums[-1] = resolution), `ch_mult` cut or extended with its
    last multiplier. The 8-px digits keep (1, 2); 16 px gets (1, 2, 2), 32 px (1, 2, 2, 2)."""
    ratio = resolution // patch_nums[-1]
    if ratio < 1 or ratio * patch_nums[-1] != resolution or ratio & (ratio - 1):
        raise ValueError(f"VAR tokenizer: {resolution}-px images cannot reach the last token map of "
                         f"{patch_nums[-1]}x{patch_nums[-1]} by halving; use a resolution of patch_nums[-1]·2^k")
    levels = ratio.bit_length()
    return tuple(ch_mult[:levels]) + (ch_mult[-1],) * max(0, levels - len(ch_mult))


def tokenizer_kwargs(cfg: VARReferenceConfig, channels: int, resolution: int | None = None) -> dict:
    """SmallVQVAE constructor arguments of a config for images with `channels` channels; with `resolution`,
    the levels follow the images' size (`follow_resolution`)."""
    ch_mult = cfg.tokenizer_ch_mult if resolution is None else \
        follow_resolution(cfg.tokenizer_ch_mult, cfg.patch_nums, resolution)
    return dict(in_channels=channels, ch=cfg.tokenizer_channels, ch_mult=list(ch_mult),
                num_res_blocks=cfg.tokenizer_res_blocks, z_channels=cfg.z_channels, vocab_size=cfg.vocab_size,
                patch_nums=list(cfg.patch_nums))


def transformer_kwargs(cfg: VARReferenceConfig, num_classes: int, *, dropout: float = 0.0) -> dict:
    """VAR constructor arguments; the reference has no dropout (DDO needs a deterministic forward)."""
    return dict(vocab_size=cfg.vocab_size, z_channels=cfg.z_channels, num_classes=num_classes, depth=cfg.depth,
                embed_dim=cfg.embed_dim, num_heads=cfg.num_heads, mlp_ratio=4.0, drop_rate=dropout,
                attn_drop_rate=dropout, drop_path_rate=0.0, cond_drop_rate=cfg.label_dropout, attn_l2_norm=True,
                patch_nums=list(cfg.patch_nums))


def train_tokenizer(tokenizer: SmallVQVAE, images: torch.Tensor, cfg: VARReferenceConfig, *,
                    progress: bool = True) -> list[dict]:
    """Adam on MSE(reconstruction, x) + VQ loss; uint8 images [N, C, H, W]. Returns the logged history.

    Same warm-up (`lr_warmup_steps`) + cosine schedule as the transformer. Codes whose usage EMA
    (`ema_vocab_hit_SV`, summed over scales) falls below 1e-3 are re-seeded from the batch's encoder
    outputs (codebook reset, as in Jukebox, Dhariwal et al. 2020, §2.3), so the small codebook stays used.
    """
    tokenizer.train().requires_grad_(True)
    optimizer = torch.optim.Adam(tokenizer.parameters(), lr=cfg.tokenizer_lr)
    history, running = [], []
    for step in tqdm(range(cfg.tokenizer_steps), disable=not progress, desc="tokenizer"):
        index = data_lib.batch_indices(len(images), cfg.tokenizer_batch_size, cfg.seed, step)
        x = data_lib.to_float(images[index])                                 # [B, C, H, W]
        # Encode, quantise over all scales (straight-through f̂), decode.
        f = tokenizer.encode(x)                                              # [B, Cvae, h, w]
        f_hat, vq_loss = tokenizer.quantize(f)
        reconstruction = tokenizer.decoder(tokenizer.post_quant_conv(f_hat))
        mse = F.mse_loss(reconstruction, x)
        loss = mse + vq_loss
        # Optimizer step, then re-seed unused codes.
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(cfg.tokenizer_lr, step, cfg.tokenizer_steps, cfg.lr_warmup_steps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _reset_dead_codes(tokenizer.quantize, f.detach(), step_generator(cfg.seed, step, STREAM_CODE_RESET))
        running.append((loss.item(), mse.item()))
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.tokenizer_steps:
            history.append(dict(step=step + 1, loss=sum(r[0] for r in running) / len(running),
                                mse=sum(r[1] for r in running) / len(running)))
            running = []
    return history


@torch.no_grad()
def _reset_dead_codes(quantize: MultiScaleQuantizer, f: torch.Tensor, generator: torch.Generator,
                      threshold: float = 1e-3) -> int:
    """Replace codes whose usage EMA (summed over scales) is below `threshold` by random latent vectors."""
    usage = quantize.ema_vocab_hit_SV.sum(dim=0)                              # [V]
    dead = (usage < threshold).nonzero()[:, 0]
    if quantize.record_hit < 10 * len(quantize.v_patch_nums) or len(dead) == 0:
        return 0
    vectors = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])                  # [B·h·w, Cvae]
    pick = torch.randint(len(vectors), (len(dead),), generator=generator)
    quantize.embedding.weight[dead] = vectors[pick].to(quantize.embedding.weight.dtype)
    quantize.ema_vocab_hit_SV[:, dead] = 1.0
    return len(dead)


# -------------------------------------------------------------------------------------------- transformer
def cosine_lr(lr: float, step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    """Linear warm-up, then cosine decay from lr to floor·lr at `total` steps (`pretrain.scheduled_lr`)."""
    return scheduled_lr(lr, step, total, warmup, "cosine", floor=floor)


@torch.no_grad()
def tokenize(tokenizer: nn.Module, images: torch.Tensor, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen tokens of uint8 images: (tokens int64 [N, L], teacher-forcing input float32 [N, L − 1, Cvae])."""
    tokens, inputs = [], []
    for chunk in images.split(batch_size):
        maps = image_to_tokens(tokenizer, data_lib.to_float(chunk))
        tokens.append(torch.cat(maps, dim=1))
        inputs.append(tokens_to_teacher_forcing_input(tokenizer, maps))
    return torch.cat(tokens), torch.cat(inputs)


def _param_groups(var: VAR, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; none on biases, position / scale embeddings, temperatures (VAR)."""
    no_decay = ("pos_start", "pos_1LC", "lvl_embed", "scale_mul")
    decay, rest = [], []
    for name, p in var.named_parameters():
        (rest if p.ndim < 2 or any(k in name for k in no_decay) else decay).append(p)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=rest, weight_decay=0.0)]


def train_transformer(var: VAR, tokens: torch.Tensor, teacher_forcing_input: torch.Tensor, labels: torch.Tensor,
                      cfg: VARReferenceConfig, *, progress: bool = True) -> tuple[VAR, list[dict]]:
    """Teacher-forced CE (mean over tokens and rows) with explicit label dropout; returns (EMA, history).

    history: one dict per `log_every` steps: step, loss (CE in nats/token, mean since the last row), lr.

    tokens: int64 [N, L]; teacher_forcing_input: [N, L − 1, Cvae]; labels: int64 [N] (0 ≤ c < num_classes).
    AdamW (0.9, 0.95) as VAR, gradient clipping at 2.0, warm-up + cosine learning rate.
    """
    optimizer = torch.optim.AdamW(_param_groups(var, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95))
    ema, beta = make_ema(var), ema_beta(cfg.batch_size, cfg.ema_halflife_images)
    history, running = [], []
    var.train()
    for step in tqdm(range(cfg.steps), disable=not progress, desc="VAR"):
        # Minibatch and its label-dropout mask (explicit, from the step's generator).
        index = data_lib.batch_indices(len(tokens), cfg.batch_size, cfg.seed + 1, step)
        generator = step_generator(cfg.seed, step, STREAM_VAR_PRETRAIN)
        uncond = torch.rand(len(index), generator=generator) < cfg.label_dropout   # [B]
        # Teacher-forced CE per token (VAR weights every token 1/L), clipped AdamW step, EMA.
        logp = log_likelihood_from_tokens(var, labels[index], tokens[index], teacher_forcing_input[index], uncond)
        loss = -logp.mean() / var.L
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(cfg.lr, step, cfg.steps, cfg.lr_warmup_steps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(var.parameters(), 2.0)
        optimizer.step()
        update_ema(ema, var, beta)
        running.append(loss.item())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            history.append(dict(step=step + 1, loss=sum(running) / len(running), lr=optimizer.param_groups[0]["lr"]))
            running = []
    return ema, history


# -------------------------------------------------------------------------------------------- reference
@dataclasses.dataclass
class VARReference(Reference):
    """A VAR `Reference` (net = EMA transformer) with its frozen tokenizer and the tokenizer's arguments."""

    tokenizer: nn.Module | None = None
    tokenizer_kwargs: dict = dataclasses.field(default_factory=dict)
    tokenizer_class: str = "SmallVQVAE"   # "SmallVQVAE" (ours, any size) or "VQVAE" (official architecture)


def build(cfg: VARReferenceConfig, dataset: data_lib.Dataset, *, progress: bool = True) -> VARReference:
    """Pretrain the tokenizer, then the VAR transformer, on `dataset` (CPU-sized).

    Deterministic on CPU for a fixed cfg and thread count: the global RNG is seeded with cfg.seed (module
    init, dropout), batches and label-dropout masks come from (seed, step).
    """
    if dataset.label_dim < 1:
        raise ValueError("VAR reference: the digits VAR is class-conditional; found an unlabelled data set")
    torch.manual_seed(cfg.seed)
    tokenizer_args = tokenizer_kwargs(cfg, dataset.channels, dataset.resolution)
    tokenizer = SmallVQVAE(**tokenizer_args)
    tokenizer_history = train_tokenizer(tokenizer, dataset.images, cfg, progress=progress)
    tokenizer.eval().requires_grad_(False)
    tokens, x_in = tokenize(tokenizer, dataset.images)
    var = VAR(**transformer_kwargs(cfg, dataset.label_dim, dropout=cfg.dropout))
    init_weights(var, torch.Generator().manual_seed(cfg.seed), init_adaln_gamma=1e-3)
    ema, history = train_transformer(var, tokens, x_in, dataset.labels, cfg, progress=progress)
    init_kwargs = transformer_kwargs(cfg, dataset.label_dim)  # same parameters, dropout modules off
    net = VAR(**init_kwargs)
    net.load_state_dict(ema.state_dict(), strict=True)
    meta = dict(source="pretrained", steps=cfg.steps, tokenizer_steps=cfg.tokenizer_steps,
                tokenizer_mse=tokenizer_history[-1]["mse"], codes_used=int(tokens.unique().numel()))
    log.info("VAR reference: tokenizer MSE %.4f, %d codes used, final CE %.3f nats/token",
             meta["tokenizer_mse"], meta["codes_used"], history[-1]["loss"])
    return VARReference(net=net.eval().requires_grad_(False), class_name="VAR", init_kwargs=init_kwargs,
                        history=history, meta=meta, tokenizer=tokenizer, tokenizer_kwargs=tokenizer_args)


NLL_IMAGES = 10_000  # at most this many (evenly spaced) images enter the reference stage's NLL


@torch.no_grad()
def negative_log_likelihood(reference: VARReference, dataset: data_lib.Dataset, batch_size: int = 512,
                            max_images: int = NLL_IMAGES) -> dict:
    """Exact −log p(tokens(x) | c) of a data set (conditional, no label dropout): nats/image and bits/token.

    Every image when there are at most `max_images`, else that many evenly spaced ones (streamed data sets
    are decoded batch by batch). Runs on the transformer's device."""
    net = reference.net.eval()
    device = next(net.parameters()).device
    tokenizer = reference.tokenizer.to(device)
    count = len(dataset.images)
    index = torch.arange(count) if count <= max_images else torch.linspace(0, count - 1, max_images).long()
    logp = []
    for chunk in index.split(batch_size):
        maps = image_to_tokens(tokenizer, data_lib.to_float(data_lib.take(dataset.images, chunk)).to(device))
        logp.append(log_likelihood_from_tokens(net, dataset.labels[chunk].to(device), torch.cat(maps, dim=1),
                                               tokens_to_teacher_forcing_input(tokenizer, maps)).cpu())
    nats = -torch.cat(logp).mean().item()
    return dict(nll_nats_per_image=nats, nll_bits_per_token=nats / math.log(2) / net.L, tokens_per_image=net.L,
                nll_images=len(index))


# ------------------------------------------------------------------------------------------- save / load
def save(path: str | pathlib.Path, reference: VARReference) -> pathlib.Path:
    """Write the reference atomically: plain tensors and Python values only."""
    if reference.tokenizer is None:
        raise ValueError("VAR reference: cannot save without its tokenizer")
    payload = dict(format=FORMAT, class_name=reference.class_name, init_kwargs=plain(reference.init_kwargs),
                   state_dict={k: v.detach().cpu() for k, v in reference.net.state_dict().items()},
                   tokenizer_class=reference.tokenizer_class, tokenizer_kwargs=plain(reference.tokenizer_kwargs),
                   tokenizer_state_dict={k: v.detach().cpu() for k, v in reference.tokenizer.state_dict().items()},
                   meta=plain(reference.meta))
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    checkpoint_lib.save_checkpoint(path, payload)
    return pathlib.Path(path)


TOKENIZERS = {"SmallVQVAE": lambda kwargs: SmallVQVAE(**kwargs), "VQVAE": vqvae_from_official}


def load(path: str | pathlib.Path) -> VARReference:
    """Read a reference written by `save` (weights_only, strict keys); both networks frozen in eval mode."""
    return from_payload(checkpoint_lib.load_checkpoint(path), path)


def from_payload(payload, path) -> VARReference:
    """`load` of an already-read file's payload (`path` only names it in errors)."""
    if payload.get("format") == FORMAT_V1:  # the small tokenizer was implied
        payload = dict(payload, format=FORMAT, tokenizer_class="SmallVQVAE")
    if payload.get("format") != FORMAT:
        raise ValueError(f"{path}: expected a ddo_lib VAR reference (format {FORMAT!r}), "
                         f"found format {payload.get('format')!r}")
    if sorted(payload) != sorted(KEYS) or payload["class_name"] != "VAR":
        raise ValueError(f"{path}: expected keys {sorted(KEYS)} and class_name 'VAR', "
                         f"found {sorted(payload)} and {payload.get('class_name')!r}")
    if payload["tokenizer_class"] not in TOKENIZERS:
        raise ValueError(f"{path}: unknown tokenizer class {payload['tokenizer_class']!r}; known {sorted(TOKENIZERS)}")
    net = load_strict(VAR(**payload["init_kwargs"]), payload["state_dict"], f"{path}: transformer")
    tokenizer = load_strict(TOKENIZERS[payload["tokenizer_class"]](payload["tokenizer_kwargs"]),
                            payload["tokenizer_state_dict"], f"{path}: tokenizer")
    return VARReference(net=net.eval().requires_grad_(False), class_name="VAR", init_kwargs=payload["init_kwargs"],
                        meta=payload["meta"], tokenizer=tokenizer.eval().requires_grad_(False),
                        tokenizer_kwargs=payload["tokenizer_kwargs"], tokenizer_class=payload["tokenizer_class"])


def load_official(cfg: VARReferenceConfig, *, label_dim: int | None = None,
                  resolution: int | None = None) -> VARReference:
    """The released VAR pair of `cfg.checkpoint` / `cfg.vqvae` as a reference (no training). `label_dim` and
    `resolution` (the data's), when given, must match the checkpoint's classes and image size."""
    if cfg.checkpoint is None:
        raise ValueError("var_reference: load_official needs `checkpoint` and `vqvae`")
    net, kwargs = official.load_var(cfg.checkpoint, depth=cfg.checkpoint_depth)
    tokenizer, tokenizer_args = official.load_vqvae(cfg.vqvae, kwargs["patch_nums"])
    official.check_pair(kwargs, tokenizer, resolution)
    if label_dim is not None and label_dim != kwargs["num_classes"]:
        raise ValueError(f"VAR checkpoint {cfg.checkpoint} has {kwargs['num_classes']} classes; the data has "
                         f"{label_dim}")
    meta = dict(source="official", checkpoint=str(cfg.checkpoint), vqvae=str(cfg.vqvae), depth=kwargs["depth"])
    log.info("VAR reference: official depth-%d VAR (%.1fM parameters), %d tokens per image", kwargs["depth"],
             sum(p.numel() for p in net.parameters()) / 1e6, sum(p * p for p in kwargs["patch_nums"]))
    return VARReference(net=net, class_name="VAR", init_kwargs=kwargs, meta=meta, tokenizer=tokenizer,
                        tokenizer_kwargs=tokenizer_args, tokenizer_class="VQVAE")


def family(reference: VARReference, **options) -> VARFamily:
    """The DDO family of this reference (its frozen tokenizer); options go to `VARFamily`."""
    if reference.tokenizer is None:
        raise ValueError("VAR reference: no tokenizer attached")
    return VARFamily(reference.tokenizer, **options)
