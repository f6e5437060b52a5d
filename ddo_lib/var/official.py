"""Official VAR checkpoints by path: `var_d{16,20,24,30}.pth` + `vae_ch160v4096z32.pth` (Tian et al. 2024).

Both files are plain state dicts (the VAR one holds no VQVAE weights). Everything needed to rebuild the
networks is read from the tensors, so any released size loads without a size table:

| read from                                   | gives                                          |
|---------------------------------------------|------------------------------------------------|
| `blocks.{i}.*`                              | depth                                          |
| `class_emb.weight` [num_classes + 1, C]      | num_classes, embed_dim C                       |
| `blocks.0.attn.scale_mul_1H11` [1, H, 1, 1]  | num_heads H (attn_l2_norm; else C / 64)        |
| `lvl_1L` [1, L] (scale index of each token)  | patch_nums (pn² tokens per scale)              |
| `word_embed.weight` [C, Cvae], `head.weight` | z_channels Cvae, vocab_size V                  |
| `shared_ada_lin.*`                          | shared_aln (VAR-d36-s)                         |
| `encoder.conv_in.weight` [ch, 3, 3, 3]       | the VQVAE's ch                                 |
| `quantize.quant_resi.qresi_ls.{k}`          | share_quant_resi                               |
| `quant_conv.weight` [Cvae, Cvae, k, k]       | quant_conv_ks                                  |

The transformer is rebuilt for DDO: label dropout (`cond_drop_rate`) and drop-path set to 0, so θ and ref are
deterministic and share the explicit label-dropout mask of the trainer (Zheng et al. 2025, §4 "VAR"; official
`build_vae_var` uses 0.1 and 0.1·depth/24). Files load with `torch.load(weights_only=True)`: a pickle that
needs code is refused.
"""
from __future__ import annotations

import math
import os
import pathlib
import re
from typing import Any

import torch

from ddo_lib.var.transformer import VAR
from ddo_lib.var.vqvae import VQVAE, vqvae_from_official

BLOCK_KEY = re.compile(r"blocks\.(\d+)\.")
VAR_KEYS = ("class_emb.weight", "lvl_1L", "word_embed.weight", "head.weight", "pos_1LC")
VQVAE_KEYS = ("encoder.conv_in.weight", "quantize.embedding.weight", "quant_conv.weight")


def read_state_dict(path: str | os.PathLike, required: tuple[str, ...], what: str) -> dict[str, torch.Tensor]:
    """A plain state dict from `path` (weights_only, CPU) holding `required` keys, else a clear error."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no file {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 — unpickling errors come in many types; name the file
        raise ValueError(f"{what}: {path} is not a weights-only torch file ({type(error).__name__}: "
                         f"{str(error)[:200]})") from error
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        found = sorted(payload)[:8] if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{what}: {path} must be a plain state dict of tensors (the released .pth format), "
                         f"found {found}")
    missing = [key for key in required if key not in payload]
    if missing:
        raise ValueError(f"{what}: {path} lacks {missing}; is it the right file?")
    return payload


def patch_nums_of(lvl_1L: torch.Tensor) -> tuple[int, ...]:
    """Token-map sizes from the scale index of each token [1, L]: scale k holds pn_k² tokens."""
    counts = torch.bincount(lvl_1L.flatten().long()).tolist()
    sizes = [math.isqrt(c) for c in counts]
    if any(s * s != c for s, c in zip(sizes, counts)):
        raise ValueError(f"VAR checkpoint: lvl_1L has {counts} tokens per scale, not squares")
    return tuple(sizes)


def var_kwargs(state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Our `VAR` constructor arguments for an official VAR state dict, with DDO's dropout-free settings."""
    depth = 1 + max(int(m.group(1)) for key in state_dict if (m := BLOCK_KEY.match(key)))
    classes, embed_dim = state_dict["class_emb.weight"].shape
    scale_mul = state_dict.get("blocks.0.attn.scale_mul_1H11")
    return dict(vocab_size=state_dict["head.weight"].shape[0], z_channels=state_dict["word_embed.weight"].shape[1],
                num_classes=classes - 1, depth=depth, embed_dim=embed_dim,
                num_heads=scale_mul.shape[1] if scale_mul is not None else embed_dim // 64, mlp_ratio=4.0,
                drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0, cond_drop_rate=0.0,
                attn_l2_norm=scale_mul is not None, shared_aln="shared_ada_lin.1.weight" in state_dict,
                patch_nums=list(patch_nums_of(state_dict["lvl_1L"])))


def vqvae_kwargs(state_dict: dict[str, torch.Tensor], patch_nums) -> dict[str, Any]:
    """Official `VQVAE(...)` arguments for a VQVAE state dict whose token maps are `patch_nums`."""
    phis = {int(m.group(1)) for key in state_dict if (m := re.match(r"quantize\.quant_resi\.qresi_ls\.(\d+)\.", key))}
    vocab_size, z_channels = state_dict["quantize.embedding.weight"].shape
    return dict(vocab_size=vocab_size, z_channels=z_channels, ch=state_dict["encoder.conv_in.weight"].shape[0],
                quant_conv_ks=state_dict["quant_conv.weight"].shape[-1], share_quant_resi=len(phis) or 4,
                v_patch_nums=list(patch_nums), test_mode=True)


def load_strict(module: torch.nn.Module, state_dict: dict, where: str) -> torch.nn.Module:
    """load_state_dict(strict) with an error naming the first missing / unexpected / reshaped keys."""
    expected = module.state_dict()
    missing, unexpected = sorted(set(expected) - set(state_dict)), sorted(set(state_dict) - set(expected))
    reshaped = [k for k in expected if k in state_dict and expected[k].shape != state_dict[k].shape]
    if missing or unexpected or reshaped:
        raise ValueError(f"{where}: keys do not match the rebuilt architecture; missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, other shapes {reshaped[:5]}")
    module.load_state_dict(state_dict, strict=True)
    return module


def load_var(path: str | os.PathLike, *, depth: int | None = None) -> tuple[VAR, dict[str, Any]]:
    """(frozen VAR in eval mode, its constructor arguments) from an official `var_d*.pth`; `depth`, when
    given, must match the file's number of blocks."""
    state_dict = read_state_dict(path, VAR_KEYS, "VAR checkpoint")
    kwargs = var_kwargs(state_dict)
    if depth is not None and depth != kwargs["depth"]:
        raise ValueError(f"VAR checkpoint: {path} has {kwargs['depth']} blocks, but depth {depth} was given")
    net = load_strict(VAR(**kwargs), state_dict, f"VAR checkpoint {path}")
    return net.eval().requires_grad_(False), kwargs


def load_vqvae(path: str | os.PathLike, patch_nums) -> tuple[VQVAE, dict[str, Any]]:
    """(frozen VQVAE, its official constructor arguments) from `vae_ch160v4096z32.pth`-style weights.

    The usage buffer `quantize.ema_vocab_hit_SV` [scales, V] follows `patch_nums` (`VQVAE.load_state_dict`)."""
    state_dict = read_state_dict(path, VQVAE_KEYS, "VQVAE checkpoint")
    kwargs = vqvae_kwargs(state_dict, patch_nums)
    vqvae = vqvae_from_official(kwargs)
    buffer = vqvae.state_dict()["quantize.ema_vocab_hit_SV"]
    state_dict = {**state_dict, "quantize.ema_vocab_hit_SV": state_dict.get("quantize.ema_vocab_hit_SV", buffer)}
    if state_dict["quantize.ema_vocab_hit_SV"].shape != buffer.shape:  # another scale count: usage statistics only
        state_dict["quantize.ema_vocab_hit_SV"] = buffer
    return load_strict(vqvae, state_dict, f"VQVAE checkpoint {path}").eval().requires_grad_(False), kwargs


def check_pair(var_kwargs_: dict[str, Any], vqvae: VQVAE, image_size: int | None = None) -> None:
    """The transformer and tokenizer belong together: same vocabulary and code width; `image_size` (the
    data's resolution) equals the tokenizer's 16·patch_nums[-1]."""
    if (var_kwargs_["vocab_size"], var_kwargs_["z_channels"]) != (vqvae.vocab_size, vqvae.Cvae):
        raise ValueError(f"VAR checkpoint expects V={var_kwargs_['vocab_size']}, Cvae={var_kwargs_['z_channels']}; "
                         f"the VQVAE has V={vqvae.vocab_size}, Cvae={vqvae.Cvae}")
    if image_size is not None and image_size != vqvae.image_size:
        raise ValueError(f"VAR checkpoint with patch_nums {list(vqvae.v_patch_nums)} generates "
                         f"{vqvae.image_size}-px images; the data is {image_size} px")
