"""Frozen configuration dataclasses of the library, built from plain mappings.

`from_dict` rejects unknown keys and wrong types (nanoGPT's configurator idea, without `exec`); the
pipeline reads the mappings from `params.yaml` (`ddo_lib.pipeline.params`). `smoke()` returns the
seconds-long variant used by CI. Defaults equal the default profile's `params.yaml` (a test checks it).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any


class ConfigError(ValueError):
    """A params.yaml section does not match its dataclass."""


def _check_type(name: str, value: Any, annotation: Any) -> Any:
    """Validate (and lightly coerce) one value against a simple type annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(name, value, option)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError("; ".join(errors))
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, found {type(value).__name__} {value!r}")
        (item_type, _) = typing.get_args(annotation)
        return tuple(_check_type(f"{name}[{i}]", v, item_type) for i, v in enumerate(value))
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        try:  # YAML 1.1 reads `2e-3` as a string.
            return float(value)
        except ValueError:
            pass
    if annotation is bool and not isinstance(value, bool):
        raise ConfigError(f"{name}: expected true/false, found {value!r}")
    if annotation is int and isinstance(value, bool):
        raise ConfigError(f"{name}: expected an integer, found {value!r}")
    if not isinstance(value, annotation):
        raise ConfigError(f"{name}: expected {annotation.__name__}, found {type(value).__name__} {value!r}")
    return value


def from_dict(cls: type, section: dict, *, where: str = "") -> Any:
    """Build the frozen dataclass `cls` from a mapping, rejecting unknown keys and wrong types."""
    if not isinstance(section, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, found {type(section).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - set(fields))
    if unknown:
        raise ConfigError(f"{where or cls.__name__}: unknown keys {unknown}; accepted: {sorted(fields)}")
    values = {}
    for key, value in section.items():
        values[key] = _check_type(f"{where}.{key}" if where else key, value, hints[key])
    return cls(**values)


@dataclasses.dataclass(frozen=True)
class ReferenceConfig:
    """Reference model: MLE pretraining of a small EDM, or an official checkpoint (notebook 02)."""

    checkpoint: str | None = None           # official EDM/EDM2 .pkl; None = pretrain here
    model_type: str = "SongUNet"            # 'SongUNet' (DDPM++) or 'DhariwalUNet' (ADM)
    model_channels: int = 8                 # base channels
    channel_mult: tuple[int, ...] = (1, 2)  # per-resolution multipliers
    num_blocks: int = 1                     # residual blocks per resolution
    attn_resolutions: tuple[int, ...] = ()  # resolutions with self-attention
    dropout: float = 0.0                    # dropout during pretraining
    steps: int = 3000                       # optimizer steps
    batch_size: int = 64                    # images per step
    lr: float = 2e-3                        # Adam learning rate (after warm-up)
    lr_warmup_steps: int = 200              # linear warm-up
    lr_schedule: str = "cosine"             # after warm-up: 'constant' (EDM) or 'cosine' decay to 0
    ema_halflife_images: int = 20000        # EMA half-life in images (EDM: 500k at CIFAR scale)
    P_mean: float = -1.2                    # log-normal sigma distribution (EDM Table 1)
    P_std: float = 1.2
    sigma_data: float = 0.5
    seed: int = 0                           # init + data order + sigma/noise stream
    sample_steps: int = 18                  # Heun steps for the sample grid (NFE = 2N - 1)
    log_every: int = 50                     # loss logging interval (steps)

    def smoke(self) -> "ReferenceConfig":
        return dataclasses.replace(self, steps=20, batch_size=16, lr_warmup_steps=5,
                                   sample_steps=4, log_every=5,
                                   model_channels=min(self.model_channels, 16))


@dataclasses.dataclass(frozen=True)
class DDOConfig:
    """DDO self-play rounds (Zheng et al. 2025, Sec. 3 and App. C) or the equal-compute MLE control."""

    mode: str = "ddo"                   # 'ddo' or 'mle' (plain EDM training for the same steps)
    rounds: int = 6                     # self-play rounds; round k's ref = best EMA of round k-1
    steps_per_round: int = 50           # optimizer steps per round
    batch_size: int = 64                # real rows per step (and as many fake rows)
    micro_batch: int | None = None      # rows per forward/backward (gradient accumulation); None = whole batch
    alpha: float = 1.0                  # weight of the fake term (Eq. 13)
    beta: float = 0.5                   # log-ratio scale (Eq. 13)
    variant: str = "bce"                # objective variant (ddo_lib.objective.VARIANTS)
    offset: float = 0.0                 # logit offset c (NCE form: -log(alpha))
    lr: float = 1.0e-4                  # Adam learning rate
    lr_warmup_steps: int = 20           # linear warm-up
    ema_halflife_images: int = 2000     # EMA half-life in images (selection uses EMA weights)
    fakes: str = "pool"                 # 'pool': an offline pool per round (pool_size fakes); 'online': every
                                        # step samples the batch's fakes from the frozen ref with the real rows'
                                        # labels (official VAR recipe), seeds `ddo_lib.seeds.online_seeds`
    pool_size: int = 2000               # fakes generated offline per round from ref
    pool_steps: int = 18                # Heun steps for the fake pool
    match_labels: bool = False          # fake row i has real row i's class (official VAR recipe)
    fake_cfg: float | None = None       # VAR: guidance of the fake pool; None = the family's (official 1.0,
                                        # a ramp t_k = cfg·k/(K−1)); 0 = truly guidance-free. EDM: must be None
    fake_tokens: str = "reencode"       # VAR: 'reencode' the decoded fakes (official) or score the 'sampled'
                                        # token indices as drawn (no tokenizer round trip). EDM: 'reencode'
    P_mean: float = 0.0                 # sigma distribution of the log-ratio estimate
    P_std: float = 1.0
    P_std_late: float | None = None     # optional widened P_std from round `widen_from_round`
    widen_from_round: int = 1
    eval_every: int = 25                # steps between evaluations of the EMA weights
    seed: int = 0
    log_every: int = 5
    checkpoint_every: int = 25          # steps between resumable states (one file per round, overwritten)
    checkpoint_minutes: float | None = None  # also save when this many minutes passed since the last save

    def smoke(self) -> "DDOConfig":
        return dataclasses.replace(self, rounds=2, steps_per_round=4, batch_size=8, pool_size=16,
                                   pool_steps=3, eval_every=2, log_every=1, checkpoint_every=2,
                                   lr_warmup_steps=1)


def override(cfg: Any, overrides: dict | None, *, where: str = "overrides") -> Any:
    """`cfg` with the fields named in `overrides` replaced, validated like a params.yaml section.

    Used by study stages that re-run a stage with one field changed (e.g. `{seed: 1}`).
    """
    if not overrides:
        return cfg
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}: expected a mapping, found {type(overrides).__name__} {overrides!r}")
    return from_dict(type(cfg), {**dataclasses.asdict(cfg), **overrides}, where=where)
