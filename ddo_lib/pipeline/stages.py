"""The work of the stages that may run on several processes (`ddo_lib.pipeline.launcher`).

Each function takes only JSON-able arguments (paths as strings), is resumable, and writes its results with
rank 0 behind barriers: under torchrun every rank calls it; afterwards the notebook calls it once more in
its own process, which finds the work done and returns it for plots and reports.
"""
from __future__ import annotations

import dataclasses
import logging

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
    world_size = train.world()[1]
    torch.set_num_threads(max(1, families.num_threads(families.family_name(ref)) // world_size))
    family = families.generator_family(ref, sample_steps=cfg.pool_steps, P_mean=cfg.P_mean, P_std=cfg.P_std)
    metric = selection.selection_metric(family, paths.resolve(classifier), dataset, smoke=smoke)
    states = train.run_rounds(family, ref.net, dataset, cfg, metric_fn=metric, work_dir=paths.resolve(work_dir),
                              precision=run.precision, compile=run.compile, progress=is_main())
    if is_main():
        evaluation.save_round_results(paths.resolve(work_dir), ref, states)
    barrier()
    return RoundsRun(cfg=cfg, dataset=dataset, ref=ref, family=family, states=states)
