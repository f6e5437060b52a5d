"""The work of the stages that may run on several processes (`ddo_lib.pipeline.launcher`).

Each function takes only JSON-able arguments (paths as strings) and writes its results with rank 0 behind
barriers: under torchrun every rank calls it; afterwards the notebook calls it once more in its own
process to get the results for plots and reports — `train_rounds` finds its rounds finished (it resumes
from their saved states), `evaluate` is told to read the records back (`read_back=True`).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import pathlib

import torch

from ddo_lib import config, data, train
from ddo_lib.eval import selection
from ddo_lib.launch import barrier, is_main
from ddo_lib.pipeline import evaluation, families, params, paths
from ddo_lib.reference import Reference

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RoundsRun:
    """What notebook 03 shows after the rounds: the config, data, reference, family and each round's state."""

    cfg: config.DDOConfig
    dataset: data.Dataset
    ref: Reference
    family: object
    states: list[train.RoundState]


def train_rounds(*, params_file: str, section: str, overrides: dict, smoke: bool, train_data: str,
                 classifier: str, reference_checkpoint: str, work_dir: str) -> RoundsRun:
    """DDO (or MLE) self-play rounds of params section `section` on this process's device; each round's
    best EMA network, `final.safetensors` (and `final.pkl` for an official reference) under `work_dir`."""
    cfg = config.override(params.load_section(config.DDOConfig, paths.resolve(params_file), section), overrides)
    cfg = cfg.smoke() if smoke else cfg
    dataset = data.load_dataset(paths.resolve(train_data))
    run, device = params.launch_settings(paths.resolve(params_file))
    ref = families.load_reference(paths.resolve(reference_checkpoint), device)
    params.check_configured(paths.resolve(params_file), families.family_name(ref))
    torch.set_num_threads(max(1, families.num_threads(families.family_name(ref)) // train.world()[1]))
    family = families.generator_family(ref, sample_steps=cfg.pool_steps, P_mean=cfg.P_mean, P_std=cfg.P_std)
    metric = selection.selection_metric(family, paths.resolve(classifier), dataset, smoke=smoke)
    states = train.run_rounds(family, ref.net, dataset, cfg, metric_fn=metric, work_dir=paths.resolve(work_dir),
                              precision=run.precision, compile=run.compile, progress=is_main())
    if is_main():
        evaluation.save_round_results(paths.resolve(work_dir), ref, states)
    barrier()
    return RoundsRun(cfg=cfg, dataset=dataset, ref=ref, family=family, states=states)


@dataclasses.dataclass
class EvaluationRun:
    """What notebook 04 shows: the config, real data, reference family, the models and their records."""

    cfg: object
    real: data.Dataset
    ref: Reference
    family: object
    evaluated: list[evaluation.Evaluated]
    records: list[dict]


def evaluate(*, params_file: str, overrides: dict, smoke: bool, train_data: str, held_out_data: str,
             classifier: str, reference_checkpoint: str, reference_metrics: str, runs: dict, out_metrics_dir: str,
             read_back: bool = False) -> EvaluationRun:
    """Score the reference and every round's best network (`evaluate` section), its spread and the real-data
    floor; write one JSON per model to `out_metrics_dir` (rank 0). `read_back`: the records were written by
    a torchrun of this function: read them instead of scoring again."""
    cfg = config.override(params.load_section(params.EvaluateConfig, paths.resolve(params_file), "evaluate"),
                          overrides)
    cfg = cfg.smoke() if smoke else cfg
    train_set = data.load_dataset(paths.resolve(train_data))
    held = data.load_dataset(paths.resolve(held_out_data), allow_empty=True)  # empty: held_out_fraction 0
    run, device = params.launch_settings(paths.resolve(params_file))
    ref = families.load_reference(paths.resolve(reference_checkpoint), device)
    name = params.check_configured(paths.resolve(params_file), families.family_name(ref))
    torch.set_num_threads(max(1, families.num_threads(name) // train.world()[1]))
    family = families.generator_family(ref, sample_steps=cfg.sample_steps, batch_size=cfg.batch_size,
                                       var_cfg=cfg.var_cfg, var_top_k=cfg.var_top_k, var_top_p=cfg.var_top_p)
    evaluated = evaluation.collect_models(paths.resolve(reference_checkpoint), paths.resolve(reference_metrics),
                                          paths.resolve_tree(runs), device=device)
    real, folder = data.concatenate([train_set, held]), paths.resolve(out_metrics_dir)
    if read_back:
        return EvaluationRun(cfg, real, ref, family, evaluated, _read_records(folder, evaluated, held))
    score = evaluation.scorer(cfg, real, paths.resolve(classifier), device=device)  # one Inception, one real subset
    scored = evaluation.evaluate_models(family, evaluated, real, paths.resolve(classifier), cfg, family_name=name,
                                        device=device, score=score)
    if cfg.spread_repeats > 1:
        scored[0].update(evaluation.evaluation_spread(family, ref.net, real, paths.resolve(classifier), cfg,
                                                      device=device, score=score))
    records = [*scored, evaluation.real_floor(train_set, held, paths.resolve(classifier), cfg, device=device)]
    if is_main():
        evaluation.write_records(folder, records)
    barrier()
    return EvaluationRun(cfg, real, ref, family, evaluated, [record for record in records if record is not None])


def _read_records(folder: pathlib.Path, evaluated, held) -> list[dict]:
    """The records a torchrun of `evaluate` wrote, in model order (the floor last when there is one)."""
    names = [model.name for model in evaluated] + (["real_held_out_vs_train"] if len(held.images) else [])
    missing = [name for name in names if not (folder / f"{name}.json").is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: the multi-process evaluation left no record for {missing}")
    return [json.loads((folder / f"{name}.json").read_text()) for name in names]
