"""Device, precision and the process group: clear errors, bf16 only inside autocast, and a real `torchrun`
of 2 gloo processes on the CPU."""
import json
import subprocess
import sys

import pytest
import torch

from ddo_lib import launch


def test_auto_and_cpu_resolve_to_the_cpu_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this check is about machines without CUDA")
    assert launch.resolve_device("auto") == torch.device("cpu")
    assert launch.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="no CUDA device is visible"):
        launch.resolve_device("cuda")


def test_settings_are_validated():
    with pytest.raises(ValueError, match="launch.device"):
        launch.LaunchConfig(device="tpu")
    with pytest.raises(ValueError, match="launch.precision"):
        launch.LaunchConfig(precision="fp16")
    with pytest.raises(ValueError, match="launch.nproc"):
        launch.LaunchConfig(nproc=0)


def test_bf16_autocast_lowers_only_what_runs_inside_it():
    linear = torch.nn.Linear(8, 8)
    x = torch.randn(4, 8)
    with launch.autocast(torch.device("cpu"), "bf16"):
        inside = linear(x)
    outside = linear(x)
    assert inside.dtype == torch.bfloat16 and outside.dtype == torch.float32
    with launch.autocast(torch.device("cpu"), "fp32"):
        assert linear(x).dtype == torch.float32
    assert linear.weight.dtype == torch.float32  # the parameters (and so the optimizer and EMA) stay fp32


def test_outside_torchrun_there_is_one_process():
    assert launch.init_distributed(torch.device("cpu")) == (0, 1)
    assert launch.is_main()
    launch.barrier()


def test_torchrun_command_lines():
    one = launch.torchrun_command(["-m", "ddo_lib.x", "--a"], nproc=8)
    assert one == ["python3", "-m", "torch.distributed.run", "--nproc-per-node=8", "--standalone", "-m", "ddo_lib.x",
                   "--a"]
    many = launch.torchrun_command(["run.py"], nproc=8, nnodes=4, rdzv_endpoint="node0:29500", rdzv_id="job7")
    assert "--nnodes=4" in many and "--rdzv-endpoint=node0:29500" in many and "--standalone" not in many
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        launch.torchrun_command(["run.py"], nproc=8, nnodes=2)


WORKER = """
import json, sys, torch, torch.distributed as dist
from ddo_lib import launch
device = launch.resolve_device("auto")
rank, world = launch.init_distributed(device)
value = torch.tensor([float(rank + 1)])
dist.all_reduce(value)
if launch.is_main():
    json.dump(dict(world=world, total=value.item(), backend=dist.get_backend(), device=str(device)),
              open(sys.argv[1], "w"))
launch.barrier()
dist.destroy_process_group()
"""


def test_torchrun_starts_two_gloo_processes_on_the_cpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("on a GPU machine this would use NCCL; the CPU path is what is checked here")
    script, out = tmp_path / "worker.py", tmp_path / "out.json"
    script.write_text(WORKER)
    command = launch.torchrun_command([str(script), str(out)], nproc=2, python=sys.executable)
    subprocess.run(command, check=True, timeout=300, capture_output=True)
    assert json.loads(out.read_text()) == dict(world=2, total=3.0, backend="gloo", device="cpu")


def test_channels_last_only_on_cuda():
    conv = torch.nn.Conv2d(3, 4, 3)
    assert launch.memory_format(torch.device("cpu")) == torch.contiguous_format
    assert launch.memory_format(torch.device("cuda", 0)) == torch.channels_last
    moved = launch.to_device(conv, torch.device("cpu"))
    assert moved.weight.is_contiguous()
    images = launch.to_device(torch.zeros(2, 3, 8, 8), torch.device("cpu"))
    assert images.is_contiguous() and launch.to_device(torch.zeros(5), torch.device("cpu")).shape == (5,)
    if torch.cuda.is_available():
        assert launch.to_device(conv, torch.device("cuda")).weight.is_contiguous(memory_format=torch.channels_last)
