"""DDO self-play rounds (Zheng et al. 2025, Sec. 3 "self-play", App. C) and the equal-compute MLE control.

Round k freezes ref_k (round 0: the pretrained reference; later: the best EMA weights of round k−1),
initialises θ from it with a fresh optimizer, generates an offline pool of fakes from ref_k (or, with
`fakes='online'`, samples every step's fakes from ref_k with the real rows' labels: the official VAR recipe), and
minimises the DDO loss (Eq. 13) on [real; fake] batches whose log-ratios share σ and noise row by row.
The EMA of θ is evaluated every `eval_every` steps by a pluggable metric (lower is better) and the
best EMA weights are kept. `mode='mle'` runs the same loop with the family's pretraining loss instead.

Determinism: every random draw of step s in round k comes from a generator seeded by (seed, k, s); data
and pool order are pure functions of (seed, k, step). A resumed run is therefore bit-identical on CPU.
Under `torchrun` the global batch is split across ranks (DDP averages gradients), so the result does
not depend on the world size beyond float summation order.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import logging
import math
import pathlib
import time
from typing import Callable

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ddo_lib import data as data_lib
from ddo_lib.checkpoint import load_checkpoint, save_checkpoint
from ddo_lib.config import DDOConfig
from ddo_lib.family import check_same_architecture, disable_dropout, renormalize_weights
from ddo_lib.launch import autocast, barrier, to_device
from ddo_lib.objective import ddo_loss, discriminator_stats, reduce_loss
from ddo_lib.optim import apply_gradients, ema_beta, make_ema, update_ema, warmup_lr
from ddo_lib.seeds import STREAM_DDO, online_seeds, pool_seeds, step_generator

log = logging.getLogger(__name__)
MetricFn = Callable[[torch.nn.Module, int], float]


def fingerprint(net: torch.nn.Module) -> str:
    """sha256 of a network's state_dict values: resumed state and pools must belong to the same ref."""
    digest = hashlib.sha256()
    for key, value in net.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def generate_pool(family, ref: torch.nn.Module, *, size: int, label_dim: int, seed: int, round_index: int,
                  with_tokens: bool = False, shard_dir: pathlib.Path | None = None,
                  **sampler) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Offline fake pool from the frozen ref: uint8 images [N, C, H, W], class-balanced int64 labels [N],
    and, with `with_tokens` (token families), the sampled token indices int64 [N, L] (else None).
    `sampler` options (e.g. VAR's cfg) go to the family's sampler.

    Under torch.distributed rank r samples the seeds r, r + W, ... (image i depends only on its seed, so the
    pool does not depend on the world size), writes them to `shard_dir/shard<r>.pt` and, after a barrier,
    every rank reads all shards memory-mapped: no object gathers, nothing pickled through the backend."""
    labels = data_lib.class_balanced_labels(size, label_dim) if label_dim else torch.full((size,), -1)
    seeds = pool_seeds(seed, round_index, size)
    rank, world_size = world()
    mine = list(range(rank, size, world_size))
    args = (ref, [seeds[i] for i in mine], labels[mine] if label_dim else None)
    parts = family.sample_with_tokens(*args, **sampler) if with_tokens else (family.sample(*args, **sampler), None)
    if world_size > 1:
        parts = _exchange_shards(parts, mine, size, shard_dir)
    return parts[0], labels, parts[1]


def _exchange_shards(parts, mine: list[int], size: int, shard_dir: pathlib.Path | None):
    """Every rank's (images, tokens) rows, through uint8/int64 shard files on a shared folder."""
    if shard_dir is None:
        raise ValueError("a pool sampled by several processes needs a shared folder for its shards "
                         "(run_rounds(..., work_dir=...))")
    rank, world_size = world()
    shard_dir = pathlib.Path(shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(shard_dir / f"shard{rank}.pt", dict(index=torch.tensor(mine), images=parts[0], tokens=parts[1],
                                                        world_size=world_size))
    barrier()
    whole = tuple(None if part is None else torch.empty((size, *part.shape[1:]), dtype=part.dtype) for part in parts)
    for other in range(world_size):
        shard = load_checkpoint(shard_dir / f"shard{other}.pt", mmap=True)
        if shard.get("world_size") != world_size:
            raise ValueError(f"{shard_dir}/shard{other}.pt belongs to a run of {shard.get('world_size')} processes")
        for target, key in zip(whole, ("images", "tokens")):
            if target is not None:
                target[shard["index"]] = shard[key]
    barrier()
    if rank == 0:
        for other in range(world_size):
            (shard_dir / f"shard{other}.pt").unlink()
    return whole


def check_fake_options(family, cfg: DDOConfig) -> None:
    """`fake_tokens='sampled'` needs a token family (VAR); `fake_cfg` a family whose sampler takes cfg."""
    if cfg.fakes not in ("pool", "online"):
        raise ValueError(f"fakes must be 'pool' (offline, per round) or 'online' (every step), found {cfg.fakes!r}")
    if cfg.fake_tokens not in ("reencode", "sampled"):
        raise ValueError(f"fake_tokens must be 'reencode' or 'sampled', found {cfg.fake_tokens!r}")
    if cfg.fake_tokens == "sampled" and not hasattr(family, "sample_with_tokens"):
        raise ValueError(f"fake_tokens='sampled' needs a token family (VAR); {type(family).__name__} "
                         "has no sampled token indices (use 'reencode')")
    if cfg.fake_cfg is not None and not hasattr(family, "cfg"):
        raise ValueError(f"fake_cfg applies to VAR sampling only; {type(family).__name__} has no guidance "
                         "scale (set fake_cfg: null)")


def check_pool(images: torch.Tensor, labels: torch.Tensor, dataset) -> None:
    """A fake pool must look like the data: uint8 [N, C, H, W] of the data's shape, valid labels."""
    expected = tuple(dataset.images.shape[1:])
    if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise ValueError(f"fake pool: expected uint8 [N, {', '.join(map(str, expected))}], "
                         f"found {images.dtype} {list(images.shape)}")
    if labels.shape != (len(images),):
        raise ValueError(f"fake pool: expected labels [{len(images)}], found {list(labels.shape)}")
    if dataset.label_dim and (labels.min() < 0 or labels.max() >= dataset.label_dim):
        raise ValueError(f"fake pool: labels must lie in [0, {dataset.label_dim}), "
                         f"found [{labels.min().item()}, {labels.max().item()}]")


def _labels(labels: torch.Tensor, label_dim: int) -> torch.Tensor | None:
    return data_lib.one_hot(labels, label_dim) if label_dim else None


def _repeat_draws(draws: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Share each row's draws between the real half and the fake half: [B, ...] -> [2B, ...]."""
    return {key: torch.cat([value, value]) for key, value in draws.items()}


def _shard(tensors: dict[str, torch.Tensor], rank: int, world_size: int) -> dict[str, torch.Tensor]:
    return {key: value.chunk(world_size)[rank] for key, value in tensors.items()}


@dataclasses.dataclass
class StepInputs:
    """One step's minibatch (this rank's rows) and its random draws."""

    real: torch.Tensor                 # [b, C, H, W] float in [-1, 1]
    real_labels: torch.Tensor | None   # [b, label_dim]
    fake: torch.Tensor | None          # [b, C, H, W]
    fake_labels: torch.Tensor | None
    draws: dict[str, torch.Tensor]     # e.g. sigma [b], noise [b, C, H, W]
    fake_tokens: torch.Tensor | None = None  # [b, L] sampled indices of the fakes (fake_tokens='sampled')

    def map(self, fn) -> "StepInputs":
        """The same inputs with `fn` applied to every tensor (device moves, row slices)."""
        def apply(value):
            return None if value is None else fn(value)

        return StepInputs(real=fn(self.real), real_labels=apply(self.real_labels), fake=apply(self.fake),
                          fake_labels=apply(self.fake_labels), draws={k: fn(v) for k, v in self.draws.items()},
                          fake_tokens=apply(self.fake_tokens))

    def micro_batches(self, size: int | None) -> list["StepInputs"]:
        """Consecutive row slices of at most `size` rows (gradient accumulation); all rows when None."""
        rows = len(self.real)
        if size is None or size >= rows:
            return [self]
        return [self.map(lambda value, start=start: value[start:start + size]) for start in range(0, rows, size)]


@dataclasses.dataclass
class OnlineFakes:
    """Fakes sampled from the frozen ref at every step with the real rows' labels (`DDOConfig.fakes='online'`,
    the official VAR DDO recipe) instead of drawn from an offline pool. Seeds: `ddo_lib.seeds.online_seeds`."""

    family: object
    ref: torch.nn.Module
    with_tokens: bool = False          # also return the sampled token indices (fake_tokens='sampled')
    sampler: dict = dataclasses.field(default_factory=dict)  # e.g. VAR's cfg

    def __call__(self, seeds: list[int], labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(uint8 images [n, C, H, W], sampled tokens int64 [n, L] or None) for seeds [n], int labels [n]."""
        if self.with_tokens:
            return self.family.sample_with_tokens(self.ref, seeds, labels, **self.sampler)
        return self.family.sample(self.ref, seeds, labels, **self.sampler), None


def _shape_of_batch(size: int, dataset) -> torch.Tensor:
    """A zero-stride stand-in [size, C, H, W] for `family.draw`, which reads only the batch's shape."""
    return torch.zeros(()).expand(size, *dataset.images.shape[1:])


def step_inputs(family, dataset, fakes, cfg: DDOConfig, round_index: int, step: int) -> StepInputs:
    """Assemble this rank's rows of step `step` of round `round_index` from (seed, round, step) only.

    The global batch's indices, draws and fake seeds are computed on every rank and sharded before any image
    is read, so a rank decodes only its own rows (streamed data sets, `ddo_lib.image_files`). `fakes`: None
    (MLE), an offline pool (images, labels[, tokens]) or `OnlineFakes`."""
    rank, world_size = world()
    generator = step_generator(cfg.seed, round_index * 10**6 + step, STREAM_DDO)
    size = len(dataset.images)
    real_index = data_lib.batch_indices(size, cfg.batch_size, cfg.seed + 7 * round_index, step)
    draws = family.draw(generator, _shape_of_batch(cfg.batch_size, dataset))
    rows = dict(real_index=real_index, real_epoch=data_lib.batch_epochs(size, cfg.batch_size, step),
                real_labels=dataset.labels[real_index], **draws)
    if isinstance(fakes, OnlineFakes):
        rows["fake_seed"] = torch.tensor(online_seeds(cfg.seed, round_index, step, cfg.batch_size, cfg.steps_per_round))
    elif fakes is not None:
        if cfg.match_labels and dataset.label_dim:
            rows["fake_index"] = data_lib.label_matched_indices(fakes[1], rows["real_labels"], generator)
        else:
            rows["fake_index"] = data_lib.batch_indices(len(fakes[0]), cfg.batch_size, cfg.seed + 7 * round_index + 3,
                                                        step)
    rows = _shard(rows, rank, world_size)
    real = data_lib.to_float(data_lib.take(dataset.images, rows["real_index"], rows["real_epoch"]))  # [b, C, H, W]
    fake, fake_labels, fake_tokens = _fake_rows(fakes, rows, dataset)
    return StepInputs(real=real, real_labels=_labels(rows["real_labels"], dataset.label_dim),
                      fake=fake, fake_labels=None if fake is None else _labels(fake_labels, dataset.label_dim),
                      draws={key: rows[key] for key in draws}, fake_tokens=fake_tokens)


def _fake_rows(fakes, rows: dict, dataset) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(float fakes [b, C, H, W], int labels [b], sampled tokens [b, L] or None) of this rank's rows."""
    if fakes is None:
        return None, None, None
    if isinstance(fakes, OnlineFakes):
        labels = rows["real_labels"]
        images, tokens = fakes(rows["fake_seed"].tolist(), labels if dataset.label_dim else None)
        check_pool(images, labels, dataset)
        return data_lib.to_float(images), labels, tokens
    index = rows["fake_index"]
    tokens = fakes[2][index] if len(fakes) > 2 and fakes[2] is not None else None
    return data_lib.to_float(fakes[0][index]), fakes[1][index], tokens


def ddo_objective(family, net, ref, batch: StepInputs, cfg: DDOConfig, *,
                  precision: str = "fp32") -> tuple[torch.Tensor, dict]:
    """DDO loss (Eq. 13) of one batch; θ runs once on [real; fake], ref once under no_grad.

    Under `precision='bf16'` only the network forwards are autocast; Δ is summed and the loss computed in
    float32 (`ddo_lib.launch`)."""
    b = len(batch.real)
    x = torch.cat([batch.real, batch.fake])                                  # [2b, C, H, W]
    labels = None if batch.real_labels is None else torch.cat([batch.real_labels, batch.fake_labels])
    draws = _repeat_draws(batch.draws)
    if batch.fake_tokens is not None:  # score the fakes' sampled indices; −1 = re-encode (the real rows)
        draws["tokens"] = torch.cat([torch.full_like(batch.fake_tokens, -1), batch.fake_tokens])
    with autocast(x.device, precision):
        logr = family.log_ratio(net, ref, x, labels, draws)                  # [2b]
    logr = logr.float()
    loss_real, loss_fake = ddo_loss(logr[:b], logr[b:], alpha=cfg.alpha, beta=cfg.beta,
                                    variant=cfg.variant, offset=cfg.offset)
    stats = discriminator_stats(logr[:b].detach(), logr[b:].detach(), cfg.beta)
    if hasattr(family, "row_weights"):  # AR label dropout (official VAR trainer): per-row weights, ÷ max(α, 1)
        weights_real, weights_fake = family.row_weights(batch.draws, cfg.alpha)
        return reduce_loss(loss_real, loss_fake, reduction="var", alpha=cfg.alpha,
                           weights_real=weights_real, weights_fake=weights_fake), stats
    return (loss_real + loss_fake).mean(), stats


def mle_objective(family, net, batch: StepInputs, *, precision: str = "fp32") -> tuple[torch.Tensor, dict]:
    """The equal-compute control: the family's pretraining loss on the real rows."""
    with autocast(batch.real.device, precision):
        loss = family.mle_loss(net, batch.real, batch.real_labels, batch.draws)
    return loss.float().mean(), {}


def _objective(family, model, ref, part: StepInputs, cfg: DDOConfig, precision: str) -> tuple[torch.Tensor, dict]:
    """The loss of `cfg.mode` on one (micro-)batch."""
    if cfg.mode == "ddo":
        return ddo_objective(family, model, ref, part, cfg, precision=precision)
    return mle_objective(family, model, part, precision=precision)


def freeze_unused(net: torch.nn.Module, objective, batch: StepInputs) -> list[str]:
    """Names of the parameters that get no gradient from `objective(net, batch)`, now frozen
    (requires_grad False), so DDP does not wait for their gradients. Example: the CIFAR-10 EDM networks'
    `map_augment` layer when no augmentation labels are passed. Which parameters are reached depends on
    the architecture and the loss, not on the data, so every rank freezes the same ones."""
    net.zero_grad(set_to_none=True)
    loss, _ = objective(net, batch)
    loss.backward()
    unused = [name for name, p in net.named_parameters() if p.requires_grad and p.grad is None]
    for name, parameter in net.named_parameters():
        if name in unused:
            parameter.requires_grad_(False)
    net.zero_grad(set_to_none=True)
    return unused


def accumulated_loss(objective, trained: torch.nn.Module, batch: StepInputs,
                     micro_batch: int | None) -> tuple[torch.Tensor, dict]:
    """Backward of `objective(trained, part)` over micro-batches of `batch`, each weighted by its share of
    the rows, so the accumulated gradient equals that of the whole batch (both reductions are row means).
    DDP all-reduces once, on the last micro-batch. Returns the batch loss (detached) and row-weighted stats."""
    parts = batch.micro_batches(micro_batch)
    if len(parts) == 1:
        loss, stats = objective(trained, batch)
        loss.backward()
        return loss.detach(), stats
    total, stats = torch.zeros(()), {}
    for index, part in enumerate(parts):
        share = len(part.real) / len(batch.real)
        last = index == len(parts) - 1
        sync = contextlib.nullcontext() if last or not hasattr(trained, "no_sync") else trained.no_sync()
        with sync:
            loss, part_stats = objective(trained, part)
            (loss * share).backward()
        total = total + loss.detach().cpu() * share
        for key, value in part_stats.items():
            stats[key] = stats.get(key, 0.0) + float(value) * share
    return total, stats


@dataclasses.dataclass
class RoundState:
    """Resumable state of one round."""

    net: torch.nn.Module
    ema: torch.nn.Module
    optimizer: torch.optim.Optimizer
    best: dict | None = None            # state_dict of the best EMA so far
    best_metric: float = math.inf
    best_step: int = -1
    step: int = 0
    done: bool = False
    history: list[dict] = dataclasses.field(default_factory=list)

    def payload(self, config: dict) -> dict:
        """The resumable state; once the round is done only its result: the best EMA weights (the last EMA
        when nothing was scored), metric, step and history — no θ, EMA or optimizer (a fifth of the size)."""
        record = dict(best=self.best, best_metric=self.best_metric, best_step=self.best_step, step=self.step,
                      done=self.done, history=self.history, config=config)
        if self.done:
            return dict(record, best=self.best if self.best is not None else self.ema.state_dict())
        return dict(record, net=self.net.state_dict(), ema=self.ema.state_dict(),
                    optimizer=self.optimizer.state_dict())

    def restore(self, payload: dict) -> None:
        if not payload["done"]:
            self.net.load_state_dict(payload["net"])
            self.ema.load_state_dict(payload["ema"])
            self.optimizer.load_state_dict(payload["optimizer"])
        for key in ("best", "best_metric", "best_step", "step", "done", "history"):
            setattr(self, key, payload[key])


def _evaluate(state: RoundState, metric_fn: MetricFn | None, round_index: int, row: dict,
              known: float | None = None) -> None:
    """Score the EMA weights (rank 0 computes, everyone receives) and keep the best. `known` is the
    metric of these exact weights when it was already computed (a round's step 0 = the previous best)."""
    if metric_fn is None:
        return
    rank, world_size = world()
    if known is not None:
        value = torch.tensor([known], dtype=torch.float64)
    else:
        value = torch.tensor([metric_fn(state.ema, round_index) if rank == 0 else 0.0], dtype=torch.float64)
    if world_size > 1 and known is None:  # NCCL collectives need a tensor on this rank's GPU
        value = value.to(_device(state.net))
        dist.broadcast(value, src=0)
        value = value.cpu()
    row["metric"] = value.item()
    if value.item() < state.best_metric:
        state.best_metric, state.best_step = value.item(), state.step
        state.best = {k: v.detach().clone() for k, v in state.ema.state_dict().items()}


def run_round(family, ref: torch.nn.Module, dataset, pool, cfg: DDOConfig, round_index: int, *,
              metric_fn: MetricFn | None = None, work_dir: pathlib.Path | None = None,
              stop_after: int | None = None, progress: bool = True, ref_metric: float | None = None,
              precision: str = "fp32", compile: bool = False) -> RoundState:
    """Train one round from θ = ref on ref's device; resume from `work_dir/state.pt` when its config matches.

    `stop_after` ends the call after that many steps of this invocation (simulates an interruption).
    `ref_metric`: the metric of `ref` if already known (the previous round's best), so step 0 is not
    scored again (the metric is a deterministic function of the weights). `precision`, `compile`: see
    `ddo_lib.launch`.
    """
    rank, world_size = world()
    if cfg.batch_size % world_size:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the world size {world_size}")
    device = _device(ref)
    net = disable_dropout(copy.deepcopy(ref)).train().requires_grad_(True)
    check_same_architecture(net, ref)
    trained = net
    if world_size > 1:
        first = step_inputs(family, dataset, pool, cfg, round_index, 0).map(lambda t: t[:1].to(device))
        unused = freeze_unused(net, lambda model, part: _objective(family, model, ref, part, cfg, precision), first)
        if unused:
            log.info("round %d: %d parameters get no gradient and stay frozen: %s", round_index, len(unused),
                     unused[:5])
        trained = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
    if compile:
        trained = torch.compile(trained)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
    state = RoundState(net=net, ema=make_ema(net), optimizer=optimizer)
    config = resume_key(cfg, round_index, ref)
    state_path = work_dir / "state.pt" if work_dir is not None else None
    if state_path is not None and state_path.exists():
        saved = load_checkpoint(state_path)
        if saved.get("config") == config:
            state.restore(saved)
            log.info("round %d: resumed at step %d", round_index, state.step)
    if state.step == 0 and not state.history:
        row = dict(round=round_index, step=0)
        _evaluate(state, metric_fn, round_index, row, known=ref_metric)
        state.history.append(row)
    beta_ema = ema_beta(cfg.batch_size, cfg.ema_halflife_images)
    first, last_save = state.step, time.monotonic()
    for step in tqdm(range(state.step, cfg.steps_per_round), initial=state.step, total=cfg.steps_per_round,
                     disable=not progress or rank != 0, desc=f"round {round_index} ({cfg.mode})"):
        if stop_after is not None and step - first >= stop_after:
            return state
        batch = step_inputs(family, dataset, pool, cfg, round_index, step).map(lambda t: to_device(t, device))
        optimizer.zero_grad(set_to_none=True)
        loss, stats = accumulated_loss(lambda model, part: _objective(family, model, ref, part, cfg, precision),
                                       trained, batch, cfg.micro_batch)
        loss, stats = _mean_over_ranks(loss, stats, device)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"round {round_index}, step {step}: loss is {loss.item()}; "
                                     f"stopping; the last good checkpoint is {state_path}")
        apply_gradients(net, optimizer, warmup_lr(cfg.lr, step, cfg.lr_warmup_steps))
        update_ema(state.ema, net, beta_ema)
        state.step = step + 1
        # Logging, evaluation of the EMA, checkpoint.
        row = dict(round=round_index, step=state.step, loss=loss.item(), **stats)
        if state.step % cfg.eval_every == 0 or state.step == cfg.steps_per_round:
            _evaluate(state, metric_fn, round_index, row)
        if state.step % cfg.log_every == 0 or "metric" in row:
            state.history.append(row)
        state.done = state.step == cfg.steps_per_round
        if rank == 0 and state_path is not None and (state.done or _checkpoint_due(cfg, state.step, last_save)):
            save_checkpoint(state_path, state.payload(config))
            last_save = time.monotonic()
    state.done = True
    return state


def _mean_over_ranks(loss: torch.Tensor, stats: dict, device: torch.device) -> tuple[torch.Tensor, dict]:
    """The logged loss and statistics as means over the ranks' equal shares of the batch, so the history
    does not depend on the world size (one small all-reduce; a no-op outside torch.distributed)."""
    rank, world_size = world()
    if world_size == 1:
        return loss, stats
    values = torch.tensor([float(loss), *map(float, stats.values())], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    values = (values / world_size).cpu()
    return values[0], dict(zip(stats, values[1:].tolist()))


def resume_key(cfg: DDOConfig, round_index: int, ref: torch.nn.Module) -> dict:
    """What a saved round state must match to be resumed: the config (minus how often it is saved), the
    round, and the reference's fingerprint."""
    key = dict(dataclasses.asdict(cfg), round=round_index, ref=fingerprint(ref))
    for name in ("checkpoint_every", "checkpoint_minutes"):
        key.pop(name)
    return key


def _checkpoint_due(cfg: DDOConfig, step: int, last_save: float) -> bool:
    """Every `checkpoint_every` steps, or `checkpoint_minutes` after the last save (long steps at scale)."""
    if step % cfg.checkpoint_every == 0:
        return True
    return cfg.checkpoint_minutes is not None and time.monotonic() - last_save >= 60.0 * cfg.checkpoint_minutes


def _device(net: torch.nn.Module) -> torch.device:
    """The device of a network's first parameter (the CPU for a parameterless one)."""
    parameter = next(net.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def best_network(state: RoundState) -> torch.nn.Module:
    """The frozen best EMA network of a round (the last EMA when no metric was given)."""
    net = copy.deepcopy(state.ema)
    if state.best is not None:
        net.load_state_dict(state.best)
    return net.eval().requires_grad_(False)


def run_rounds(family, reference: torch.nn.Module, dataset, cfg: DDOConfig, *,
               metric_fn: MetricFn | None = None, work_dir: str | pathlib.Path | None = None,
               progress: bool = True, stop_after: int | None = None, device: torch.device | str | None = None,
               precision: str = "fp32", compile: bool = False) -> list[RoundState]:
    """All rounds: ref ← best EMA of the previous round (self-play). Returns each round's state.

    `device`: where θ, ref and every batch live (default: the reference's); `precision` ('fp32' or
    'bf16' autocast of the forwards) and `compile`: `ddo_lib.launch`. Pools and checkpoints stay on the CPU.
    """
    if cfg.mode not in ("ddo", "mle"):
        raise ValueError(f"mode must be 'ddo' or 'mle', found {cfg.mode!r}")
    if cfg.micro_batch is not None and cfg.micro_batch < 1:
        raise ValueError(f"micro_batch must be >= 1 (or null for the whole batch), found {cfg.micro_batch}")
    check_fake_options(family, cfg)
    work_dir = pathlib.Path(work_dir) if work_dir is not None else None
    # EDM2: start at the forced-weight-normalisation fixed point so θ = ref gives Δ = 0 (no-op for EDM/VAR).
    ref = renormalize_weights(copy.deepcopy(reference)).eval().requires_grad_(False)
    ref = to_device(ref, device if device is not None else _device(reference))  # channels_last on CUDA
    results = []
    for round_index in range(cfg.rounds):
        round_dir = work_dir / f"round{round_index}" if work_dir is not None else None
        if round_dir is not None:
            round_dir.mkdir(parents=True, exist_ok=True)
        round_family = family_for_round(family, cfg, round_index)
        pool = None
        if cfg.mode == "ddo":
            pool = _fakes(round_family, ref, dataset, cfg, round_index, round_dir)
        known = results[-1].best_metric if results and math.isfinite(results[-1].best_metric) else None
        state = run_round(round_family, ref, dataset, pool, cfg, round_index, metric_fn=metric_fn,
                          work_dir=round_dir, stop_after=stop_after, progress=progress, ref_metric=known,
                          precision=precision, compile=compile)
        results.append(state)
        if not state.done:
            break
        ref = best_network(state)
    return results


def family_for_round(family, cfg: DDOConfig, round_index: int):
    """Optional σ widening in later rounds (App. C: P_std 1.6 → 3.0 for EDM2-S from round 17)."""
    widened = cfg.P_std_late if (cfg.P_std_late is not None and round_index >= cfg.widen_from_round) else cfg.P_std
    result = copy.copy(family)
    result.P_mean, result.P_std = cfg.P_mean, widened
    return result


def _fakes(family, ref, dataset, cfg: DDOConfig, round_index: int, round_dir: pathlib.Path | None):
    """Round k's fakes: `OnlineFakes` from ref (cfg.fakes='online') or its offline pool."""
    if cfg.fakes == "online":
        return OnlineFakes(family, ref, with_tokens=cfg.fake_tokens == "sampled",
                           sampler={} if cfg.fake_cfg is None else dict(cfg=cfg.fake_cfg))
    return _pool(family, ref, dataset, cfg, round_index, round_dir)


def _pool(family, ref, dataset, cfg: DDOConfig, round_index: int, round_dir: pathlib.Path | None):
    """Load round k's pool from disk or generate (and save) it; validate it against the data."""
    path = round_dir / "pool.pt" if round_dir is not None else None
    key = dict(ref=fingerprint(ref), size=cfg.pool_size, steps=cfg.pool_steps, seed=cfg.seed,
               fake_cfg=cfg.fake_cfg, fake_tokens=cfg.fake_tokens)
    saved = load_checkpoint(path, mmap=True) if path is not None and path.exists() else None
    if saved is not None and saved.get("key") == key:
        images, labels, tokens = saved["images"], saved["labels"], saved.get("tokens")
    else:
        sampler = {} if cfg.fake_cfg is None else dict(cfg=cfg.fake_cfg)
        images, labels, tokens = generate_pool(family, ref, size=cfg.pool_size, label_dim=dataset.label_dim,
                                               seed=cfg.seed, round_index=round_index,
                                               with_tokens=cfg.fake_tokens == "sampled",
                                               shard_dir=None if round_dir is None else round_dir / "pool_shards",
                                               **sampler)
        if path is not None and world()[0] == 0:
            save_checkpoint(path, dict(images=images, labels=labels, tokens=tokens, key=key))
    check_pool(images, labels, dataset)
    if tokens is not None and tokens.shape[0] != images.shape[0]:
        raise ValueError(f"fake pool: {tokens.shape[0]} token rows for {images.shape[0]} images")
    return images, labels, tokens
