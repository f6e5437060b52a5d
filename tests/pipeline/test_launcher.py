"""ddo_lib.pipeline.launcher: what a notebook starts under torchrun (the 2-process run itself is in
tests/pipeline/test_preset_miniatures.py)."""
import json

import pytest

from ddo_lib.pipeline import launcher, stages


def test_one_process_runs_nothing_here(tmp_path):
    assert launcher.launch("ddo_lib.pipeline.stages:train_rounds", {"params_file": "params.yaml"}, nproc=1,
                           job_file=tmp_path / "job.json") is False
    assert not (tmp_path / "job.json").exists()
    with pytest.raises(ValueError, match="nproc"):
        launcher.launch("ddo_lib.pipeline.stages:train_rounds", {}, nproc=0, job_file=tmp_path / "job.json")


@pytest.mark.parametrize("target", ["os:system", "ddo_lib.train:run_rounds", "ddo_lib.pipeline.stages",
                                    "ddo_lib.pipeline.stages:no_such_function", "ddo_lib.pipeline.stages:a b"])
def test_only_pipeline_functions_can_be_targets(target):
    with pytest.raises(ValueError, match="launch target"):
        launcher.resolve_target(target)


def test_the_job_file_names_target_and_arguments(tmp_path):
    job = dict(params_file="params.yaml", section="ddo", overrides={"seed": 1}, smoke=True)
    path = launcher.write_job(tmp_path / "sub" / "job.json", "ddo_lib.pipeline.stages:train_rounds", job)
    assert json.loads(path.read_text()) == {"target": "ddo_lib.pipeline.stages:train_rounds", "kwargs": job}
    assert launcher.resolve_target("ddo_lib.pipeline.stages:train_rounds") is stages.train_rounds
    with pytest.raises(ValueError, match="params_file"):
        launcher.write_job(tmp_path / "job.json", "ddo_lib.pipeline.stages:train_rounds", {"section": "ddo"})


def test_a_failing_worker_raises_with_its_exit_code(tmp_path):
    import subprocess
    import sys

    job = dict(params_file=str(tmp_path / "missing.yaml"), section="ddo", overrides={}, smoke=True,
               train_data="x", classifier="x", reference_checkpoint="x", work_dir=str(tmp_path))
    with pytest.raises(subprocess.CalledProcessError):
        launcher.launch("ddo_lib.pipeline.stages:train_rounds", job, nproc=2, job_file=tmp_path / "job.json",
                        python=sys.executable, timeout=300)
