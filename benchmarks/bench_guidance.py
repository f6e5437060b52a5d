"""Benchmark: the extra inference cost of Discriminator Guidance (Kim et al. 2022) on the default EDM.

Builds the default-profile reference (params.yaml `reference` section -> `reference_init_kwargs`, 8×8
digits, 1 channel, 10 classes) and a `NoisyDiscriminator` of `DiscriminatorConfig` width, both with
random weights (timing does not depend on the weights), and times `generate` with the 18-step Heun
sampler (35 NFE) guided against unguided. Each guided NFE adds one discriminator forward + backward.

    python benchmarks/bench_guidance.py                         # CPU, default profile
    python benchmarks/bench_guidance.py --device cuda --images 2048 --batch-size 512

This is a script, not a test: numbers depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import json
import logging
import pathlib

import torch

from ddo_lib.baselines.guidance import (
    DiscriminatorConfig,
    GuidedDenoiser,
    NoisyDiscriminator,
    measure_guidance_cost,
)
from ddo_lib.config import ReferenceConfig, load_section
from ddo_lib.edm.precond import network_from_official
from ddo_lib.edm.reference import reference_init_kwargs

log = logging.getLogger("bench_guidance")
REPO = pathlib.Path(__file__).resolve().parents[1]
DIGITS = dict(resolution=8, channels=1, label_dim=10)


def build(params: pathlib.Path, width: int, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Default-profile EDMPrecond and a discriminator, random weights, eval mode, frozen."""
    cfg = load_section(ReferenceConfig, params, "reference")
    torch.manual_seed(0)
    net = network_from_official("EDMPrecond", reference_init_kwargs(cfg, **DIGITS))
    discriminator = NoisyDiscriminator(channels=DIGITS["channels"], resolution=DIGITS["resolution"],
                                       label_dim=DIGITS["label_dim"], width=width, sigma_data=cfg.sigma_data)
    return (net.to(device).eval().requires_grad_(False),
            discriminator.to(device).eval().requires_grad_(False))


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=pathlib.Path, default=REPO / "params.yaml")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=18, help="Heun steps (NFE = 2N - 1)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=DiscriminatorConfig().width)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave as is)")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    net, discriminator = build(args.params, args.width, device)
    labels = torch.arange(args.images) % DIGITS["label_dim"]
    cost = measure_guidance_cost(GuidedDenoiser(net, discriminator, weight=1.0), range(args.images), labels,
                                 batch_size=args.batch_size, num_steps=args.steps, repeats=args.repeats)
    result = dict(device=str(device), torch_threads=torch.get_num_threads(), batch_size=args.batch_size,
                  denoiser_parameters=count(net), discriminator_parameters=count(discriminator),
                  discriminator_width=args.width, **cost)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
