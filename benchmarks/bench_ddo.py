"""Benchmark: one DDO step vs one EDM pretraining step on the same network and batch.

Prints seconds per row and the ratio DDO / EDM. A DDO step with B real and B fake rows runs θ
forward+backward on 2B rows and ref forward on 2B rows, an EDM step θ forward+backward on B rows, so
per row the floor is (3 + 1) / 3 ≈ 1.33 (forward = 1 unit, backward = 2). Peak memory: CUDA's
max_memory_allocated on a GPU; on CPU the peak RSS of a fresh subprocess per measurement.

    python benchmarks/bench_ddo.py                       # tiny digits-sized net, CPU
    python benchmarks/bench_ddo.py --preset cifar10 --device cuda --batch 64
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import resource
import subprocess
import sys
import time

import torch

from ddo_lib.config import DDOConfig
from ddo_lib.edm.family import EDMFamily
from ddo_lib.edm.precond import network_from_official
from ddo_lib.family import disable_dropout
from ddo_lib.train import StepInputs, ddo_objective, mle_objective

log = logging.getLogger("bench_ddo")
PRESETS = {
    "digits": dict(img_resolution=8, img_channels=1, label_dim=10, model_type="SongUNet", model_channels=32,
                   channel_mult=[1, 2], num_blocks=1, attn_resolutions=[], dropout=0.0),
    "cifar10": dict(img_resolution=32, img_channels=3, label_dim=10, augment_dim=9, model_type="SongUNet",
                    model_channels=128, channel_mult=[2, 2, 2], num_blocks=4, attn_resolutions=[16],
                    dropout=0.13),
}


def make_inputs(net, batch: int, device) -> StepInputs:
    generator = torch.Generator().manual_seed(0)
    shape = (batch, net.img_channels, net.img_resolution, net.img_resolution)
    labels = torch.eye(net.label_dim)[torch.arange(batch) % net.label_dim].to(device)
    real = torch.rand(shape, generator=generator).mul(2).sub(1).to(device)
    fake = torch.rand(shape, generator=generator).mul(2).sub(1).to(device)
    draws = EDMFamily().draw(generator, real)
    return StepInputs(real=real, real_labels=labels, fake=fake, fake_labels=labels, draws=draws)


def time_step(kind: str, preset: str, batch: int, repeats: int, device: str) -> dict:
    """Seconds per row and peak memory of `repeats` optimizer steps of `kind` ('ddo' or 'edm')."""
    torch.manual_seed(0)
    ref = network_from_official("EDMPrecond", PRESETS[preset]).to(device).eval().requires_grad_(False)
    net = disable_dropout(copy.deepcopy(ref)).train().requires_grad_(True)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    family, cfg, inputs = EDMFamily(), DDOConfig(), make_inputs(ref, batch, device)

    def step():
        loss = ddo_objective(family, net, ref, inputs, cfg)[0] if kind == "ddo" else \
            mle_objective(family, net, inputs)[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up (allocator, kernels)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    rows = batch * (2 if kind == "ddo" else 1)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return dict(kind=kind, seconds_per_step=seconds / repeats, seconds_per_row=seconds / repeats / rows,
                peak_bytes=peak)


def measure_in_subprocess(kind: str, args) -> dict:
    """Run one measurement in a fresh interpreter so peak RSS belongs to it alone (CPU)."""
    command = [sys.executable, __file__, "--only", kind, "--preset", args.preset, "--batch", str(args.batch),
               "--repeats", str(args.repeats), "--device", args.device, "--threads", str(args.threads)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="digits")
    parser.add_argument("--batch", type=int, default=64, help="real rows per step")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=["ddo", "edm"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.only:
        print(json.dumps(time_step(args.only, args.preset, args.batch, args.repeats, args.device)))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    measure = (lambda kind: measure_in_subprocess(kind, args)) if args.device == "cpu" else \
        (lambda kind: time_step(kind, args.preset, args.batch, args.repeats, args.device))
    edm, ddo = measure("edm"), measure("ddo")
    print(f"preset={args.preset} device={args.device} batch={args.batch} (real rows) repeats={args.repeats}")
    print(f"{'step':<6}{'s/step':>10}{'s/row':>12}{'peak MiB':>11}")
    for row in (edm, ddo):
        print(f"{row['kind']:<6}{row['seconds_per_step']:>10.4f}{row['seconds_per_row']:>12.6f}"
              f"{row['peak_bytes'] / 2**20:>11.1f}")
    print(f"time per row DDO/EDM = {ddo['seconds_per_row'] / edm['seconds_per_row']:.3f}  (floor ~1.33, target <= 1.40)")
    print(f"peak memory DDO/EDM  = {ddo['peak_bytes'] / edm['peak_bytes']:.3f}  (target <= 1.5; CPU: whole-process RSS)")


if __name__ == "__main__":
    main()
