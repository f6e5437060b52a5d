"""Evaluation bookkeeping of the pipeline: the models of a run, their metric records, the spread of the
reference's metric, the real-data floor, and the summaries and tables written to `metrics/`.

Seeds come from `ddo_lib.seeds`: final evaluation `evaluation_seeds(offset, N)`, the spread
`spread_seeds(k, N)`; selection inside rounds uses its own range (`ddo_lib.eval.selection`).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
from typing import Sequence

import torch

from ddo_lib import seeds as seeds_lib
from ddo_lib.checkpoint import write_json
from ddo_lib.config import DDOConfig
from ddo_lib.edm import export as edm_export
from ddo_lib.eval import features, fid, metrics
from ddo_lib.eval.selection import generate_for_metric
from ddo_lib.pipeline import families as models_lib
from ddo_lib.pipeline import paths
from ddo_lib.reference import Reference
from ddo_lib.train import RoundState, best_network, fingerprint

log = logging.getLogger(__name__)

def round_result(ref: Reference, state: RoundState) -> Reference:
    """The best EMA network of a round, with the reference's family, constructor arguments (and tokenizer)."""
    return models_lib.with_network(ref, best_network(state), source="ddo_round", best_step=state.best_step,
                                   best_metric=state.best_metric, steps=state.step)


def flatten_history(history: Sequence[dict], cfg: DDOConfig) -> list[dict]:
    """Rows with a global step across rounds and a fixed set of columns (CSV / plots)."""
    columns = ("round", "step", "global_step", "loss", "accuracy", "margin", "metric")
    rows = []
    for row in history:
        full = dict(row, global_step=row["round"] * cfg.steps_per_round + row["step"])
        rows.append({key: full.get(key) for key in columns})
    return rows


def history_rows(states: Sequence[RoundState], cfg: DDOConfig) -> list[dict]:
    """`flatten_history` of every round's logged rows, in round order."""
    return flatten_history([row for state in states for row in state.history], cfg)


def save_round_results(work_dir, ref: Reference, states: Sequence[RoundState]) -> list[pathlib.Path]:
    """Write each round's best EMA network as `<work_dir>/round<k>/best.pt` (the reference's format, weights
    only), and the last round's as `final.safetensors` and, when the reference came from an official
    EDM/EDM2 pickle, `final.pkl` in that format (`ddo_lib.edm.export_official`: official `generate.py`
    loads it)."""
    written = []
    for k, state in enumerate(states):
        path = pathlib.Path(work_dir) / f"round{k}" / "best.pt"
        written.append(models_lib.save_reference(path, round_result(ref, state)))
        log.info("round %d: best selection FD %.3f at step %d", k, state.best_metric, state.best_step)
    if states and states[-1].done:
        written += export_final(pathlib.Path(work_dir), ref, best_network(states[-1]), len(states) - 1)
    return written


def export_final(work_dir: pathlib.Path, ref: Reference, net: torch.nn.Module, round_index: int) -> list[pathlib.Path]:
    """`final.safetensors` (any family) and `final.pkl` (EDM/EDM2 from an official pickle) of `net`."""
    meta = dict(family=models_lib.family_name(ref), class_name=ref.class_name, round=round_index)
    written = [edm_export.export_safetensors(net, work_dir / "final.safetensors", meta)]
    source = paths.resolve(str(ref.meta.get("source", "")))
    if source.suffix == ".pkl":
        if not source.is_file():
            raise FileNotFoundError(f"the reference came from {source}, which is gone: it is the template that "
                                    "final.pkl is written from (ddo_lib.edm.export_official)")
        written.append(edm_export.export_official(net, source, work_dir / "final.pkl"))
    return written


def sample_rows(family, nets: Sequence[torch.nn.Module], *, label_dim: int, per_model: int = 10) -> torch.Tensor:
    """One row of images per network, same seeds and labels for every network: uint8 [M·per_model, C, H, W]."""
    return torch.cat([generate_for_metric(family, net, seeds=seeds_lib.evaluation_seeds(0, per_model), label_dim=label_dim)
                      for net in nets])


def training_summary(states: Sequence[RoundState], cfg: DDOConfig, mode: str) -> dict:
    """Flat JSON of a rounds stage: best selection metric and step per round."""
    record = dict(mode=mode, rounds=len(states), steps_per_round=cfg.steps_per_round, alpha=cfg.alpha,
                  beta=cfg.beta, variant=cfg.variant, lr=cfg.lr, batch_size=cfg.batch_size)
    for k, state in enumerate(states):
        record[f"round{k}_best_selection_fd"] = state.best_metric
        record[f"round{k}_best_step"] = state.best_step
    return record


@dataclasses.dataclass(frozen=True)
class Evaluated:
    """A model to evaluate: its name in tables, its round and its compute as a fraction of pretraining."""

    name: str
    net: torch.nn.Module
    round: int
    compute_fraction: float | None


def collect_models(reference_path, reference_metrics_path, run_dirs: dict, *,
                   device: torch.device | str = "cpu") -> list[Evaluated]:
    """The reference and the best network of every round of every run (e.g. {'ddo': dir, 'mle': dir}),
    on `device`. compute_fraction = optimizer steps spent after pretraining / pretraining steps; None for a
    reference that was not pretrained here (an official checkpoint: its pretraining steps are not ours to count).
    """
    ref = models_lib.load_reference(reference_path, device)
    pretrain_steps = int(json.loads(pathlib.Path(reference_metrics_path).read_text())["steps"])
    models = [Evaluated("reference", ref.net, 0, 0.0)]
    for run, folder in run_dirs.items():
        spent = 0
        for k, path in enumerate(sorted(pathlib.Path(folder).glob("round*/best.pt"), key=_round_number)):
            loaded = models_lib.load_reference(path, device)
            spent += int(loaded.meta.get("steps", 0))
            models.append(Evaluated(f"{run}_round{k + 1}", loaded.net, k + 1,
                                    spent / pretrain_steps if pretrain_steps else None))
    return models


def _round_number(path: pathlib.Path) -> int:
    return int(path.parent.name.removeprefix("round"))


METRICS = ("fd_digits", "fid")


def scorer(cfg, real, classifier_path, *, device: torch.device | str = "cpu"):
    """A `score(sample, count) -> metric record` for `cfg.metric`, where `sample(positions)` returns the uint8
    images at those positions of a set of `count`: `fd_digits` (the data stage's classifier against all
    real images) or `fid` (Inception features against `cfg.reference_stats`; `ddo_lib.eval.fid`).

    Under torch.distributed the FID is sharded: each rank embeds the positions rank, rank + W, ... and the
    feature moments are summed (`FeatureMoments.all_reduce`); only the precision/recall subset's features are
    gathered. fd_digits (the CPU profile's metric) is computed whole on every rank."""
    if cfg.metric not in METRICS:
        raise ValueError(f"evaluate.metric must be one of {list(METRICS)}, found {cfg.metric!r}")
    if cfg.metric == "fid":
        return _fid_scorer(cfg, real, device)
    extractor = features.load_classifier(classifier_path)
    return lambda sample, count: metrics.evaluate_images(sample(list(range(count))), real.images, extractor,
                                                         name=cfg.metric)


def _fid_scorer(cfg, real, device):
    if cfg.reference_stats is None:
        raise ValueError("evaluate.metric fid needs evaluate.reference_stats (an EDM/ADM .npz or EDM2 .pkl, or "
                         "the path where statistics of the real images are cached)")
    extractor = fid.inception(cfg.inception_weights, device)

    def inception(images):
        return fid.inception_features(extractor, images, batch_size=cfg.batch_size)

    def real_images(positions):
        return real.images[positions]

    reference = fid.reference_stats_cached(
        cfg.reference_stats, lambda: _sharded(inception, real_images, len(real.images), 0, cfg, device)[0])
    real_subset = _sharded(inception, real_images, min(len(real.images), cfg.precision_recall_images),
                           cfg.precision_recall_images, cfg, device)[1]

    def score(sample, count: int) -> dict:
        moments, fake_subset = _sharded(inception, sample, count, cfg.precision_recall_images, cfg, device)
        precision, recall = fid.precision_recall_blocked(real_subset, fake_subset)
        return dict(metric="fid", value=fid.fid_from_moments(moments, reference), precision=precision,
                    recall=recall, extractor=fid.EXTRACTOR, num_images=count,
                    reference_stats_file=str(cfg.reference_stats), precision_recall_images=len(fake_subset))

    return score


def _sharded(inception, sample, count: int, keep: int, cfg, device) -> tuple["fid.FeatureMoments", torch.Tensor]:
    """Moments of the Inception features of the `count` images that `sample(positions)` returns, this rank
    taking every W-th position, summed over ranks; and the features of positions < `keep` from every rank
    (for precision/recall; a set, so the rank order does not matter). Each image is embedded once."""
    rank, world_size = fid.world()
    mine = fid.shard(range(count), rank, world_size)
    moments, kept = fid.FeatureMoments.empty(), [torch.zeros(0, fid.INCEPTION_DIM)]
    for start in range(0, len(mine), cfg.batch_size):
        positions = mine[start:start + cfg.batch_size]
        features = inception(sample(positions)).float().cpu()
        moments = moments.add(features)
        kept.append(features[[i for i, p in enumerate(positions) if p < keep]])
    return moments.all_reduce(device), _gather_rows(torch.cat(kept), device)


def _gather_rows(rows: torch.Tensor, device) -> torch.Tensor:
    """Every rank's rows [n_r, D] concatenated in rank order (tensors padded to the largest n_r)."""
    rank, world_size = fid.world()
    if world_size == 1:
        return rows
    import torch.distributed as dist

    counts = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world_size)]
    dist.all_gather(counts, torch.tensor([len(rows)], device=device))
    largest = int(max(count.item() for count in counts))
    padded = torch.zeros(largest, rows.shape[1], device=device)
    padded[:len(rows)] = rows.to(device)
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:int(count.item())].cpu() for part, count in zip(parts, counts)])


def _score(family, net, real, score, cfg) -> dict:
    """The metric record of `net`: cfg.num_images images per seed offset, the minimum over offsets (EDM)."""
    best = None
    for offset in cfg.seed_offsets:
        seeds = seeds_lib.evaluation_seeds(offset, cfg.num_images)
        record = score(_sampler(family, net, seeds, real.label_dim, cfg.label_protocol), cfg.num_images)
        if best is None or record["value"] < best["value"]:
            best = dict(record, seed_offset=offset)
    return best


def _sampler(family, net, seeds, label_dim: int, label_protocol: str):
    """positions -> the images of `net` for seeds[p] (labels of the whole seed set)."""
    return lambda positions: generate_for_metric(family, net, seeds=seeds, label_dim=label_dim,
                                                 label_protocol=label_protocol, positions=positions)


def evaluate_models(family, models: Sequence[Evaluated], real, classifier_path, cfg, *,
                    family_name: str = "edm", device: torch.device | str = "cpu", score=None) -> list[dict]:
    """Score every model (`_score`); records are tagged with `family_name`. A network identical to one
    already scored (a round whose best step was its step 0 keeps its reference) reuses that score: same
    weights and seeds give the same images. `score`: a `scorer(cfg, real, ...)` built once by the caller."""
    score = score or scorer(cfg, real, classifier_path, device=device)
    records, scored = [], {}
    for model in models:
        key = fingerprint(model.net)
        if key not in scored:
            scored[key] = _score(family, model.net, real, score, cfg)
        best = scored[key]
        records.append(dict(best, family=family_name, model=model.name, round=model.round,
                            compute_fraction=model.compute_fraction,
                            seeds=f"{best['seed_offset']}..{best['seed_offset'] + cfg.num_images - 1}",
                            seed_offsets=list(cfg.seed_offsets), sample_steps=cfg.sample_steps,
                            reference_stats=_reference_stats_name(cfg), paper_value=cfg.paper_value,
                            **({} if cfg.label_protocol == "balanced" else dict(label_protocol=cfg.label_protocol)),
                            **(_var_sampler(cfg) if family_name == "var" else {})))
    return records


def _var_sampler(cfg) -> dict:
    """The VAR sampling settings a record was made with (guidance ramp, top-k / top-p; 0 = off)."""
    return dict(var_cfg=cfg.var_cfg, var_top_k=cfg.var_top_k, var_top_p=cfg.var_top_p)


def _reference_stats_name(cfg) -> str:
    return str(cfg.reference_stats) if cfg.metric == "fid" else "train+held_out real images"


def evaluation_spread(family, net, real, classifier_path, cfg, *, device: torch.device | str = "cpu",
                      score=None) -> dict:
    """The metric of one model on `cfg.spread_repeats` disjoint seed sets (`ddo_lib.seeds.spread_seeds`):
    mean and standard deviation (ddof=1) — the noise floor any claimed improvement must clear."""
    if cfg.spread_repeats < 2:
        raise ValueError(f"spread_repeats must be >= 2 for a standard deviation, found {cfg.spread_repeats}")
    score = score or scorer(cfg, real, classifier_path, device=device)
    values = []
    for k in range(cfg.spread_repeats):
        sample = _sampler(family, net, seeds_lib.spread_seeds(k, cfg.num_images), real.label_dim, cfg.label_protocol)
        values.append(score(sample, cfg.num_images)["value"])
    mean = sum(values) / len(values)
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return dict(spread_values=values, spread_mean=mean, spread_sd=sd)


def real_floor(train, held_out, classifier_path, cfg, *, device: torch.device | str = "cpu") -> dict | None:
    """The score of held-out real images against the training images: what 'perfect' looks like (None
    without held-out images: `data.held_out_fraction: 0`)."""
    if len(held_out.images) == 0:
        log.info("no held-out images (data.held_out_fraction 0): no real-data floor")
        return None
    record = scorer(cfg, train, classifier_path, device=device)(lambda positions: held_out.images[positions],
                                                                 len(held_out.images))
    return dict(record, family="real", model="real_held_out_vs_train", round=-1, compute_fraction=0.0,
                reference_stats="train real images" if cfg.metric != "fid" else str(cfg.reference_stats),
                note="held-out real images vs train; FD is biased upward at small N, so compare only at equal N")


def write_records(folder, records: Sequence[dict | None]) -> list[pathlib.Path]:
    """One flat JSON per record, named after its model (metrics/eval/<model>.json); None entries (an absent
    real-data floor) are skipped."""
    return [write_json(pathlib.Path(folder) / f"{record['model']}.json", record) for record in records
            if record is not None]


def side_by_side(models: Sequence[Evaluated]) -> list[Evaluated]:
    """The reference, the last DDO round and the last MLE-control round (for sample grids)."""
    last = {}
    for model in models:
        last[model.name.split("_round")[0]] = model
    return list(last.values())
