"""Cost model of the diffusion presets: images, FLOPs and GPU-hours per DDO round (docs/scaling.md).

Forward FLOPs per image are counted, not guessed: `torch.utils.flop_counter` on one forward of each
preset's network (random weights, the official architecture; batch 1, CPU) and of torch-fidelity's
Inception-v3 at 299×299. Everything else is arithmetic on the preset's settings:

- DDO step: θ forward + backward (≈ 3 forwards) on [B real; B fake] and one ref forward on the same 2B
  rows: 8·B·F. The MLE control's step: 3·B·F.
- pool: `pool_size` images × NFE (2·pool_steps − 1) forwards, once per round.
- selection: every `eval_every` steps, 500 images × NFE forwards (ddo_lib.eval.selection).
- final evaluation: per model, num_images × |seed_offsets| images × NFE + Inception on each.

GPU-hours are FLOP-derived: FLOPs / (GPUs × peak × MFU) with the H100 SXM dense peaks (TF32 494.7, BF16
989.4 TFLOP/s) and an assumed MFU (default 0.3); `benchmarks/bench_gpu.py` measures real throughput.

    python benchmarks/cost_model.py                # markdown table + JSON (--out)
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_gpu import NETWORKS, build  # noqa: E402  (the benchmark's official architectures)

PRESET_NETWORK = {"cifar10-cond": "cifar10-ddpmpp", "cifar10-uncond": "cifar10-ddpmpp",
                  "imagenet64-edm2-s": "edm2-s-img64"}
PEAK_TFLOPS = {"fp32": 494.7, "bf16": 989.4}   # H100 SXM dense: TF32 tensor cores / BF16
SELECTION_IMAGES = 500


def forward_flops(net: torch.nn.Module, x: torch.Tensor, *args) -> int:
    """FLOPs of one forward (matmuls and convolutions; 2 per multiply-add)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(x, *args)
    return counter.get_total_flops()


def network_flops(name: str) -> int:
    """Forward FLOPs per image of a preset's network (label 0 when conditional)."""
    net = build(name, torch.device("cpu"), quick=False)
    x = torch.zeros(1, net.img_channels, net.img_resolution, net.img_resolution)
    labels = torch.eye(net.label_dim)[:1] if net.label_dim else None
    return forward_flops(net, x, torch.ones(1), labels)


def inception_flops() -> int:
    """Forward FLOPs of torch-fidelity's inception-v3-compat on one 299×299 image (random weights)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from ddo_lib.eval import fid

    path = ROOT / "benchmarks" / ".inception-random.pth"
    torch.save(fid.random_inception_state(), path)
    try:
        net = FeatureExtractorInceptionV3(fid.EXTRACTOR, [str(fid.INCEPTION_DIM)],
                                          feature_extractor_weights_path=str(path)).eval()
    finally:
        path.unlink()
    return forward_flops(net, torch.zeros(1, 3, 299, 299, dtype=torch.uint8))


def preset_costs(preset: dict, flops: int, inception: int, *, gpus: int, mfu: float) -> dict:
    """Per-round images and FLOPs, and FLOP-derived GPU-hours, of one preset."""
    ddo, evaluate = preset["ddo"], preset["evaluate"]
    b, steps = ddo["batch_size"], ddo["steps_per_round"]
    pool_nfe, eval_nfe = 2 * ddo["pool_steps"] - 1, 2 * evaluate["sample_steps"] - 1
    train = 8 * b * flops * steps
    pool = ddo["pool_size"] * pool_nfe * flops
    selection = (steps // ddo["eval_every"]) * SELECTION_IMAGES * pool_nfe * flops
    images_evaluated = evaluate["num_images"] * len(evaluate["seed_offsets"])
    per_model = images_evaluated * (eval_nfe * flops + inception)
    rate = gpus * PEAK_TFLOPS[preset["launch"]["precision"]] * 1e12 * mfu
    round_flops = train + pool + selection
    return dict(rounds=ddo["rounds"], real_images_per_round=b * steps, fake_images_per_round=b * steps,
                forward_gflops_per_image=flops / 1e9, train_pflops=train / 1e15, pool_pflops=pool / 1e15,
                selection_pflops=selection / 1e15, round_pflops=round_flops / 1e15,
                gpu_hours_per_round=gpus * round_flops / rate / 3600,
                wall_hours_per_round=round_flops / rate / 3600,
                evaluation_pflops_per_model=per_model / 1e15,
                evaluation_gpu_hours_per_model=gpus * per_model / rate / 3600,
                all_rounds_gpu_hours=gpus * (ddo["rounds"] * round_flops) / rate / 3600)


def markdown(rows: dict, gpus: int, mfu: float) -> str:
    head = ("| preset | GFLOPs/image | images/round (real + fake) | PFLOPs/round (train + pool + selection) | "
            f"GPU-h/round | wall h/round on {gpus} GPUs | rounds | GPU-h all rounds | GPU-h per evaluated model |")
    lines = [head, "|" + "---|" * 9]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['forward_gflops_per_image']:.1f} | 2 × {row['real_images_per_round']:,} | "
                     f"{row['round_pflops']:.0f} ({row['train_pflops']:.0f} + {row['pool_pflops']:.1f} + "
                     f"{row['selection_pflops']:.1f}) | {row['gpu_hours_per_round']:.1f} | "
                     f"{row['wall_hours_per_round']:.2f} | {row['rounds']} | {row['all_rounds_gpu_hours']:.0f} | "
                     f"{row['evaluation_gpu_hours_per_model']:.2f} |")
    return "\n".join(lines) + f"\n\nH100 SXM peak × MFU {mfu}; FLOP-derived, not measured.\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=sorted(PRESET_NETWORK))
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--mfu", type=float, default=0.3)
    parser.add_argument("--out", type=pathlib.Path, default=None, help="write the numbers as JSON")
    args = parser.parse_args(argv)
    inception = inception_flops()
    flops = {name: network_flops(name) for name in sorted({PRESET_NETWORK[p] for p in args.presets})}
    rows = {}
    for name in args.presets:
        preset = yaml.safe_load((ROOT / "presets" / f"{name}.yaml").read_text())
        rows[name] = preset_costs(preset, flops[PRESET_NETWORK[name]], inception, gpus=args.gpus, mfu=args.mfu)
    print(markdown(rows, args.gpus, args.mfu))
    if args.out:
        args.out.write_text(json.dumps(dict(gpus=args.gpus, mfu=args.mfu, inception_gflops=inception / 1e9,
                                            networks={k: v / 1e9 for k, v in flops.items()}, presets=rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
