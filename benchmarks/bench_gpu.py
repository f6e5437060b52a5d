"""GPU benchmark of the paper-scale diffusion networks: sampling and the DDO step in fp32, bf16, bf16+compile.

Random weights in the official architectures: the CIFAR-10 DDPM++ network (EDMPrecond + SongUNet, 32×32,
55.7M parameters; 18 Heun steps = 35 NFE) and EDM2-S at 64×64 (Precond, 280M parameters; EDM2 sampler,
32 steps = 63 NFE). For every (network, mode) it measures

- sampler images/s at `--sample-batch` images per call (after one warm-up call),
- DDO-step real rows/s: θ forward+backward and ref forward on [B real; B fake], Adam (ddo_lib.train),
- peak GPU memory of each measurement, and
- max |Δ| of the uint8 samples against the fp32 run (same seeds),

and writes one JSON (`--out`, default `$OUT/bench_gpu.json` when $OUT is set). Modes: `fp32` (TF32 matmuls
allowed), `bf16` (autocast of the forwards; ddo_lib.launch), `bf16+compile` (torch.compile of θ for the DDO
step and of the denoiser for sampling). Designed to finish in under 5 minutes on one H100/H200.

    python benchmarks/bench_gpu.py                      # on a GPU machine
    python benchmarks/bench_gpu.py --device cpu --quick # the same code path in seconds, CPU (a smoke check)
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import pathlib
import time

import torch

from ddo_lib import launch, train
from ddo_lib.config import DDOConfig
from ddo_lib.edm.family import EDMFamily
from ddo_lib.edm.precond import network_from_official
from ddo_lib.edm.sampler import generate
from ddo_lib.family import disable_dropout

log = logging.getLogger("bench_gpu")

NETWORKS = {  # class, constructor arguments (official configs), sampler, steps
    "cifar10-ddpmpp": ("EDMPrecond", dict(img_resolution=32, img_channels=3, label_dim=10, augment_dim=9,
                                          model_type="SongUNet", embedding_type="positional",
                                          encoder_type="standard", decoder_type="standard", channel_mult_noise=1,
                                          resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2],
                                          num_blocks=4, attn_resolutions=[16], dropout=0.13), "edm", 18),
    "edm2-s-img64": ("Precond", dict(img_resolution=64, img_channels=3, label_dim=1000, use_fp16=False,
                                     model_channels=192, channel_mult=[1, 2, 3, 4], num_blocks=3,
                                     attn_resolutions=[16, 8], dropout=0.0), "edm2", 32),
}
QUICK = {  # --quick: tiny stand-ins with the same code path
    "cifar10-ddpmpp": dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[],
                           img_resolution=8),
    "edm2-s-img64": dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8],
                         img_resolution=16, label_dim=10),
}
MODES = ("fp32", "bf16", "bf16+compile")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def build(name: str, device: torch.device, quick: bool) -> torch.nn.Module:
    class_name, kwargs, _, _ = NETWORKS[name]
    kwargs = dict(kwargs, **(QUICK[name] if quick else {}))
    torch.manual_seed(0)
    net = network_from_official(class_name, kwargs)
    with torch.no_grad():  # move zero-initialised output layers so samples and gradients are not trivial
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return net.to(device).eval().requires_grad_(False)


def time_sampling(net, sampler: str, steps: int, images: int, mode: str, device) -> tuple[float, torch.Tensor]:
    """(images per second, uint8 samples) of `images` seeds in one batch; one warm-up call first."""
    model = torch.compile(net) if mode.endswith("compile") else net
    labels = torch.arange(images) % net.label_dim if net.label_dim else None
    precision = "fp32" if mode == "fp32" else "bf16"

    def run():
        with launch.autocast(device, precision):
            return generate(model, range(images), labels, batch_size=images, sampler=sampler, num_steps=steps)

    run()
    synchronize(device)
    start = time.perf_counter()
    samples = run()
    synchronize(device)
    return images / (time.perf_counter() - start), samples


def time_ddo_step(ref, batch: int, repeats: int, mode: str, device) -> float:
    """Real rows per second of `repeats` DDO steps (after two warm-up steps)."""
    net = disable_dropout(copy.deepcopy(ref)).train().requires_grad_(True)
    trained = torch.compile(net) if mode.endswith("compile") else net
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-5)
    family, cfg = EDMFamily(), DDOConfig(batch_size=batch, alpha=4.0, beta=0.05)
    generator = torch.Generator().manual_seed(0)
    shape = (batch, ref.img_channels, ref.img_resolution, ref.img_resolution)
    labels = torch.eye(ref.label_dim)[torch.arange(batch) % ref.label_dim] if ref.label_dim else None
    real, fake = torch.rand(shape, generator=generator) * 2 - 1, torch.rand(shape, generator=generator) * 2 - 1
    inputs = train.StepInputs(real=real, real_labels=labels, fake=fake, fake_labels=labels,
                              draws=family.draw(generator, real)).map(lambda t: t.to(device))
    precision = "fp32" if mode == "fp32" else "bf16"

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss, _ = train.ddo_objective(family, trained, ref, inputs, cfg, precision=precision)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    synchronize(device)
    return batch * repeats / (time.perf_counter() - start)


def bench_network(name: str, args, device: torch.device) -> list[dict]:
    _, _, sampler, steps = NETWORKS[name]
    steps = 4 if args.quick else steps
    ref = build(name, device, args.quick)
    parameters = sum(p.numel() for p in ref.parameters())
    rows, baseline = [], None
    for mode in args.modes:
        reset_peak(device)
        images_per_second, samples = time_sampling(ref, sampler, steps, args.sample_batch, mode, device)
        sample_peak = peak_bytes(device)
        baseline = samples if mode == "fp32" else baseline
        difference = None if baseline is None else (samples.int() - baseline.int()).abs().max().item()
        reset_peak(device)
        rows_per_second = time_ddo_step(ref, args.ddo_batch, args.repeats, mode, device)
        rows.append(dict(network=name, parameters=parameters, mode=mode, sampler=sampler, steps=steps,
                         sample_batch=args.sample_batch, sample_images_per_second=images_per_second,
                         sample_peak_bytes=sample_peak, max_abs_uint8_difference_vs_fp32=difference,
                         ddo_batch_real_rows=args.ddo_batch, ddo_real_rows_per_second=rows_per_second,
                         ddo_peak_bytes=peak_bytes(device)))
        log.info("%s", rows[-1])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=launch.DEVICES)
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--sample-batch", type=int, default=128, help="images per sampler call")
    parser.add_argument("--ddo-batch", type=int, default=64, help="real rows per DDO step (plus as many fakes)")
    parser.add_argument("--repeats", type=int, default=10, help="timed DDO steps")
    parser.add_argument("--quick", action="store_true", help="tiny stand-in networks (CPU smoke check)")
    parser.add_argument("--out", default=None, help="JSON path (default: $OUT/bench_gpu.json or ./bench_gpu.json)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.quick:
        args.sample_batch, args.ddo_batch, args.repeats = min(args.sample_batch, 8), min(args.ddo_batch, 4), 2
    device = launch.resolve_device(args.device)
    launch.allow_tf32(device)
    results = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                   torch=torch.__version__, quick=args.quick, rows=[])
    for name in args.networks:
        results["rows"] += bench_network(name, args, device)
    out = pathlib.Path(args.out or pathlib.Path(os.environ.get("OUT", ".")) / "bench_gpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
