"""Run a stage's heavy work on several processes from its notebook (`launch.nproc > 1`).

The notebooks stay the stages. A notebook cell calls `launch(target, job, nproc=...)`: with one process it
does nothing and the notebook runs `target(**job)` itself; with more it starts

    torchrun --standalone --nproc-per-node=N -m ddo_lib.pipeline.launcher JOB.json

which joins the process group (NCCL on GPUs after `set_device(LOCAL_RANK)`, gloo on the CPU) and runs
`target(**job)` on every rank, streaming the ranks' logs into the notebook. The work is resumable and writes
its results to disk (rank 0, behind barriers), so the notebook's own call of `target(**job)` afterwards
finds everything finished and only reads it back — the notebook then plots and reports as with one process.

Multi-node: run `torchrun_command(..., nnodes=, rdzv_endpoint=)` on every node (docs/scaling.md, Slurm).
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import pathlib
import subprocess
import sys
import tempfile
from typing import Any, Callable

from ddo_lib.checkpoint import atomic_write_bytes
from ddo_lib.launch import torchrun_command

log = logging.getLogger(__name__)


def resolve_target(target: str) -> Callable[..., Any]:
    """'package.module:function' -> the function (only inside `ddo_lib.pipeline`)."""
    module_name, _, name = target.partition(":")
    if not module_name.startswith("ddo_lib.pipeline.") or not name.isidentifier():
        raise ValueError(f"launch target must be 'ddo_lib.pipeline.<module>:<function>', found {target!r}")
    function = getattr(importlib.import_module(module_name), name, None)
    if not callable(function):
        raise ValueError(f"launch target {target!r}: {module_name} has no function {name!r}")
    return function


def write_job(path: str | os.PathLike, target: str, job: dict) -> pathlib.Path:
    """The job file a worker reads: target and JSON keyword arguments (paths as strings; `params_file`
    required: its `launch` section names the device)."""
    resolve_target(target)
    if "params_file" not in job:
        raise ValueError(f"a launch job needs 'params_file' (its launch section); found keys {sorted(job)}")
    payload = json.dumps(dict(target=target, kwargs=job), indent=1, sort_keys=True, default=str)
    return atomic_write_bytes(path, payload.encode())


def launch(target: str, job: dict, *, nproc: int, job_file: str | os.PathLike | None = None,
           python: str | None = None, timeout: float | None = None) -> bool:
    """Run `target(**job)` under torchrun on `nproc` processes; False (nothing run) when `nproc` is 1.

    `job_file`: where the job is written (default: a temporary file, removed afterwards). The ranks' output
    is streamed here line by line; a failing rank raises CalledProcessError with its exit code after
    torchrun has stopped the others (the work's resumable state stays on disk)."""
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, found {nproc}")
    if nproc == 1:
        return False
    if job_file is None:
        with tempfile.TemporaryDirectory(prefix="ddo-launch-") as folder:
            return launch(target, job, nproc=nproc, job_file=pathlib.Path(folder) / "job.json", python=python,
                          timeout=timeout)
    path = write_job(job_file, target, job)
    command = torchrun_command(["-m", "ddo_lib.pipeline.launcher", str(path)], nproc=nproc,
                               python=python or sys.executable)
    log.info("launching %s on %d processes: %s", target, nproc, " ".join(command))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as process:
        for line in process.stdout:
            print(line, end="", flush=True)
        code = process.wait(timeout=timeout)
    if code != 0:
        raise subprocess.CalledProcessError(code, command)
    return True


def worker(job_file: str | os.PathLike) -> None:
    """One rank: join the process group on this rank's device, run the job, leave the group."""
    import torch.distributed as dist

    from ddo_lib.launch import init_distributed
    from ddo_lib.pipeline.params import launch_settings

    spec = json.loads(pathlib.Path(job_file).read_text())
    function = resolve_target(spec["target"])
    _, device = launch_settings(spec["kwargs"]["params_file"])  # this rank's device (cuda:LOCAL_RANK or cpu)
    init_distributed(device)
    try:
        function(**spec["kwargs"])
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format=f"[rank {os.environ.get('RANK', '0')}] %(name)s: %(message)s")
    worker(sys.argv[1])
