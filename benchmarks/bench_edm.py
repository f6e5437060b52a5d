"""Throughput of the EDM CIFAR-10 DDPM++ network: Heun sampling and the training step (Karras et al. 2022).

Random weights, official architecture (EDMPrecond + SongUNet, 32x32, 55.7M parameters). Measures:
1. sampling cost per image: a short Heun run (few steps) on a few images, reported per network
   evaluation (NFE) and scaled linearly to the 18-step / 35-NFE CIFAR-10 sampler;
2. the EDM training step (forward + backward + Adam) in seconds per batch row;
3. on CUDA only: images/s of the 35-NFE sampler at a large batch, fp32 against bf16 autocast with
   channels_last (optionally torch.compile), and the max |difference| between the two outputs.

Usage: python benchmarks/bench_edm.py [--device cpu] [--sample-images 1] [--sample-steps 2] ...
This is a script, not a test: numbers depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import copy
import logging
import time

import torch
from torch import nn

from ddo_lib.edm.loss import edm_loss, sample_sigma
from ddo_lib.edm.precond import EDMPrecond
from ddo_lib.edm.random import latents_and_labels
from ddo_lib.edm.sampler import edm_sampler

logger = logging.getLogger("bench_edm")

CIFAR10_DDPMPP = dict(img_resolution=32, img_channels=3, label_dim=10, model_type="SongUNet",
                      embedding_type="positional", encoder_type="standard", decoder_type="standard",
                      channel_mult_noise=1, resample_filter=[1, 1], model_channels=128,
                      channel_mult=[2, 2, 2], num_blocks=4, attn_resolutions=[16], dropout=0.13,
                      augment_dim=9)
REFERENCE_STEPS = 18  # CIFAR-10 sampler: 18 Heun steps = 35 NFE


def nfe(num_steps: int) -> int:
    """Network evaluations of the Heun sampler: 2N - 1."""
    return 2 * num_steps - 1


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    """Run fn once and return (result, seconds)."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - start


def build_net(device: torch.device) -> EDMPrecond:
    torch.manual_seed(0)
    net = EDMPrecond(**CIFAR10_DDPMPP).to(device)
    logger.info("DDPM++ CIFAR-10: %.1fM parameters", sum(p.numel() for p in net.parameters()) / 1e6)
    return net


def sample(net: nn.Module, seeds: list[int], num_steps: int, device: torch.device) -> torch.Tensor:
    draws = latents_and_labels(seeds, [3, 32, 32], net.label_dim, device)
    return edm_sampler(net, draws.latents, draws.labels, num_steps=num_steps)


def bench_sampling(net: EDMPrecond, images: int, steps: int, device: torch.device) -> dict:
    """Seconds per image per NFE from a short run, scaled to 35 NFE."""
    net.eval()
    sample(net, [0], 2, device)  # warm-up
    _, seconds = timed(lambda: sample(net, list(range(images)), steps, device), device)
    per_nfe = seconds / (images * nfe(steps))
    return {"measured": f"{images} image(s) x {steps} steps = {nfe(steps)} NFE in {seconds:.2f} s",
            "s/image/NFE": per_nfe, "s/image @35 NFE (scaled)": per_nfe * nfe(REFERENCE_STEPS)}


def training_step(net: EDMPrecond, optimizer: torch.optim.Optimizer, batch: int, generator: torch.Generator,
                  device: torch.device) -> float:
    """One EDM step: loss summed over C·H·W, mean over the batch; Adam update."""
    draw = lambda *shape: torch.randn(*shape, generator=generator).to(device)  # noqa: E731
    x = torch.rand(batch, 3, 32, 32, generator=generator).to(device) * 2 - 1
    labels = torch.eye(10)[torch.randint(10, [batch], generator=generator)].to(device)
    sigma = sample_sigma(draw(batch))
    loss = edm_loss(net, x, labels, sigma, draw(batch, 3, 32, 32), augment_labels=draw(batch, 9)).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def bench_training(net: EDMPrecond, batch: int, iterations: int, device: torch.device) -> dict:
    net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8)
    generator = torch.Generator().manual_seed(0)
    training_step(net, optimizer, batch, generator, device)  # warm-up (allocates Adam state)
    _, seconds = timed(lambda: [training_step(net, optimizer, batch, generator, device)
                                for _ in range(iterations)], device)
    return {"measured": f"{iterations} step(s) of batch {batch} in {seconds:.2f} s",
            "s/row": seconds / (iterations * batch), "s/step": seconds / iterations}


class AutocastUNet(nn.Module):
    """Runs a UNet under bf16 autocast in channels_last and hands float32 back to the fp32 preconditioner."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            F_x = self.model(x.contiguous(memory_format=torch.channels_last), noise_labels, class_labels,
                             augment_labels=augment_labels)
        return F_x.float()


def bench_cuda(net: EDMPrecond, batch: int, steps: int, compile_unet: bool, device: torch.device) -> list[dict]:
    """Images/s of the Heun sampler at `batch`, fp32 vs bf16 autocast + channels_last, and max |difference|."""
    net.eval()
    torch.backends.cuda.matmul.allow_tf32 = False  # EDM trains and samples with TF32 off
    torch.backends.cudnn.allow_tf32 = False
    fast = copy.deepcopy(net)
    fast.model = AutocastUNet(fast.model)
    if compile_unet:
        fast.model = torch.compile(fast.model)
    seeds = list(range(batch))
    rows, outputs = [], {}
    for name, model in (("fp32", net), ("bf16 autocast + channels_last" + (" + compile" if compile_unet else ""), fast)):
        sample(model, seeds, 2, device)  # warm-up (and compilation)
        outputs[name], seconds = timed(lambda: sample(model, seeds, steps, device), device)
        rows.append({"mode": name, "images/s": batch / seconds, "measured": f"{batch} images x {nfe(steps)} NFE "
                                                                         f"in {seconds:.2f} s"})
    reference, fast_output = outputs.values()
    rows.append({"mode": "max |fp32 - bf16|", "images/s": float("nan"),
                 "measured": f"{(reference - fast_output).abs().max().item():.4g} (x in [-1, 1] units)"})
    return rows


def print_table(title: str, rows: list[dict]) -> None:
    logger.info("== %s ==", title)
    for row in rows:
        logger.info("  " + " | ".join(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}"
                                      for key, value in row.items()))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave as is)")
    parser.add_argument("--sample-images", type=int, default=1, help="images in the short sampling run")
    parser.add_argument("--sample-steps", type=int, default=2, help="Heun steps in the short run (NFE = 2N - 1)")
    parser.add_argument("--train-batch", type=int, default=8, help="batch of the training step")
    parser.add_argument("--train-steps", type=int, default=1, help="timed training steps (after one warm-up)")
    parser.add_argument("--gpu-batch", type=int, default=256, help="CUDA sampling batch")
    parser.add_argument("--gpu-steps", type=int, default=REFERENCE_STEPS, help="CUDA Heun steps")
    parser.add_argument("--compile", action="store_true", help="torch.compile the bf16 UNet (CUDA only)")
    parser.add_argument("--skip-training", action="store_true", help="skip the training-step measurement")
    return parser.parse_args()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    logger.info("device %s, torch %s, %d CPU threads", device, torch.__version__, torch.get_num_threads())
    net = build_net(device)
    print_table("sampling (fp32, Heun; scaled linearly per NFE)",
                [bench_sampling(net, args.sample_images, args.sample_steps, device)])
    if not args.skip_training:
        print_table("EDM training step (fp32, forward + backward + Adam)",
                    [bench_training(net, args.train_batch, args.train_steps, device)])
    if device.type == "cuda":
        print_table(f"CUDA sampling throughput, batch {args.gpu_batch}, {nfe(args.gpu_steps)} NFE",
                    bench_cuda(net, args.gpu_batch, args.gpu_steps, args.compile, device))


if __name__ == "__main__":
    main()
