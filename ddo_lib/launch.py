"""Where and how a run executes: device, precision, compilation, and the torch.distributed process group.

| setting     | values                | meaning                                                                 |
|-------------|-----------------------|-------------------------------------------------------------------------|
| `device`    | `auto`, `cpu`, `cuda` | `auto`: this process's GPU (`cuda:LOCAL_RANK`) when CUDA is visible, else the CPU |
| `nproc`     | ≥ 1                   | processes per node; > 1 runs under `torchrun` (NCCL on GPUs, gloo on CPU) |
| `precision` | `fp32`, `bf16`        | `bf16`: autocast around network forwards only                            |
| `compile`   | `false`, `true`       | `torch.compile` the trainable network                                   |

Precision contract: under `bf16` only the forwards of θ and ref run in bfloat16. The DDO loss (`logsigmoid` of
β·Δ), the per-sample Δ sums over pixels or tokens, the optimizer state and the EMA stay float32: Δ is a
difference of two large sums that nearly cancel near θ = ref, and bf16's 8-bit mantissa would round it away.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os

import torch
import torch.distributed as dist

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """params.yaml section `launch` (the defaults are the CPU profile's)."""

    device: str = "auto"        # auto | cpu | cuda
    nproc: int = 1              # processes per node (torchrun when > 1)
    precision: str = "fp32"     # fp32 | bf16 (autocast for network forwards)
    compile: bool = False       # torch.compile the trainable network

    def __post_init__(self):
        if self.device not in DEVICES:
            raise ValueError(f"launch.device must be one of {list(DEVICES)}, found {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"launch.precision must be one of {list(PRECISIONS)}, found {self.precision!r}")
        if self.nproc < 1:
            raise ValueError(f"launch.nproc must be >= 1, found {self.nproc}")


def local_rank() -> int:
    """This process's index on its node (torchrun's LOCAL_RANK; 0 when not launched by torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(name: str = "auto", rank_on_node: int | None = None) -> torch.device:
    """The torch device for `name`; a clear error when CUDA is asked for and none is visible."""
    if name not in DEVICES:
        raise ValueError(f"device must be one of {list(DEVICES)}, found {name!r}")
    index = local_rank() if rank_on_node is None else rank_on_node
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("launch.device is 'cuda' but no CUDA device is visible on this machine "
                           "(torch.cuda.is_available() is False); set launch.device: auto or cpu")
    if index >= torch.cuda.device_count():
        raise RuntimeError(f"process {index} of this node needs GPU {index}, but only {torch.cuda.device_count()} "
                           f"are visible; lower launch.nproc")
    return torch.device("cuda", index)


def autocast(device: torch.device, precision: str = "fp32"):
    """The context for network forwards: bfloat16 autocast under `bf16`, nothing under `fp32`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, found {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def allow_tf32(device: torch.device) -> None:
    """TF32 tensor cores for float32 matmuls and convolutions on CUDA (Ampere and newer); no-op on CPU."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CUDA (faster convolutions with tensor cores), the default layout elsewhere."""
    return torch.channels_last if torch.device(device).type == "cuda" else torch.contiguous_format


def to_device(value, device: torch.device):
    """A network or tensor on `device`; 4-D weights and images in `memory_format(device)` there."""
    value = value.to(device)
    if isinstance(value, torch.nn.Module) or value.ndim == 4:
        return value.to(memory_format=memory_format(torch.device(device)))
    return value


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group torchrun describes (WORLD_SIZE > 1): NCCL for CUDA devices (after
    `set_device`, so collectives use this process's GPU), gloo on the CPU. Returns (rank, world_size)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1 or (dist.is_available() and dist.is_initialized()):
        return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def is_main() -> bool:
    """Rank 0, or the only process: the one that writes shared files."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op outside torch.distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def torchrun_command(program: list[str], *, nproc: int, nnodes: int = 1, rdzv_endpoint: str | None = None,
                     rdzv_id: str = "ddo", python: str = "python3") -> list[str]:
    """The `torchrun` command line that runs `program` (`["-m", module, *args]` or `[script, *args]`) on
    `nproc` processes per node.

    One node: `--standalone`. Several nodes (e.g. one `srun` task per node under Slurm): the same command
    on every node, with the rendezvous endpoint `host:port` of the first node and a job id."""
    if nproc < 1 or nnodes < 1:
        raise ValueError(f"torchrun needs nproc >= 1 and nnodes >= 1, found {nproc}, {nnodes}")
    command = [python, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    if nnodes == 1:
        command.append("--standalone")
    else:
        if not rdzv_endpoint:
            raise ValueError("a multi-node run needs rdzv_endpoint='host:port' of the first node")
        command += [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}",
                    f"--rdzv-id={rdzv_id}"]
    return command + list(program)
