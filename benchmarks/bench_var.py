"""Benchmark: VAR next-scale sampling with / without the KV cache, and a DDO-AR step vs a CE (MLE) step.

Two models with random weights:
- `digits`: the tiny digits VAR of `ddo_lib.var.reference` (default config: 4 scales, L = 30, V = 128)
  with its small tokenizer; steps go through the full family path (tokenizer encode + teacher forcing).
- `d16`: a d16-shaped transformer (C 1024, 16 heads, 10 scales, L = 680, V 4096, Cvae 32) with only
  `--d16-depth` blocks (d16 has 16); a small stand-in tokenizer with the official quantiser shape, images
  not decoded, steps on token sequences (the 256 px VQVAE encoder is left out).

Sampling: tokens/s and images/s for `sample(..., use_kv_cache=True/False)` at cfg = 1 (the batch is
doubled by CFG). Without the cache scale k re-runs all tokens up to it: Σ_k end_k tokens instead of L.
Training: seconds per real row of `train.ddo_objective` (θ forward+backward on [real; fake], ref forward
on both: 2·3 + 2·1 = 8 units per real row) against `train.mle_objective` (3 units): nominal ratio 8/3 ≈ 2.67
(forward = 1 unit, backward = 2; the DDO step also encodes twice as many images, the optimizer step is shared).

    python benchmarks/bench_var.py                      # CPU, 1 thread
    python benchmarks/bench_var.py --device cuda --batch 256 --d16-depth 16 --d16-batch 32 --d16-train-batch 8
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

from ddo_lib.config import DDOConfig
from ddo_lib.train import StepInputs, ddo_objective, mle_objective
from ddo_lib.var.family import VARFamily
from ddo_lib.var.reference import (
    SmallVQVAE,
    VARReferenceConfig,
    tokenizer_kwargs,
    transformer_kwargs,
)
from ddo_lib.var.sampler import sample
from ddo_lib.var.transformer import IMAGENET_PATCH_NUMS_256, VAR, init_weights


def digits_models(device: str) -> tuple[VAR, SmallVQVAE]:
    cfg = VARReferenceConfig()
    torch.manual_seed(0)
    tokenizer = SmallVQVAE(**tokenizer_kwargs(cfg, channels=1)).to(device).eval().requires_grad_(False)
    var = init_weights(VAR(**transformer_kwargs(cfg, num_classes=10)), torch.Generator().manual_seed(0))
    return var.to(device).eval().requires_grad_(False), tokenizer


def d16_models(device: str, depth: int) -> tuple[VAR, SmallVQVAE]:
    torch.manual_seed(0)
    tokenizer = SmallVQVAE(in_channels=3, ch=32, ch_mult=(1,), z_channels=32, vocab_size=4096,
                           patch_nums=IMAGENET_PATCH_NUMS_256).to(device).eval().requires_grad_(False)
    var = VAR(vocab_size=4096, z_channels=32, num_classes=1000, depth=depth, embed_dim=1024, num_heads=16,
              drop_path_rate=0.0, patch_nums=IMAGENET_PATCH_NUMS_256)
    var = init_weights(var, torch.Generator().manual_seed(0), init_adaln_gamma=1e-3)
    return var.to(device).eval().requires_grad_(False), tokenizer


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_sampling(var: VAR, tokenizer, *, batch: int, repeats: int, device: str, use_kv_cache: bool,
                  decode: bool) -> dict:
    """Images/s and tokens/s of next-scale sampling at cfg 1 (per-sample seeds)."""
    labels = (torch.arange(batch) % var.num_classes).to(device)

    def run(offset: int):
        sample(var, tokenizer, labels=labels, seeds=range(offset, offset + batch), cfg=1.0,
               use_kv_cache=use_kv_cache, decode=decode)

    run(10**6)  # warm-up
    _sync(device)
    start = time.perf_counter()
    for r in range(repeats):
        run(r * batch)
    _sync(device)
    seconds = (time.perf_counter() - start) / repeats
    return dict(images_per_s=batch / seconds, tokens_per_s=batch * var.L / seconds, seconds=seconds)


def time_steps(var: VAR, tokenizer, *, batch: int, repeats: int, device: str, through_images: bool) -> dict:
    """Seconds per real row of a DDO step and of a CE step (optimizer included)."""
    family = VARFamily(tokenizer)
    ref = var
    net = copy.deepcopy(ref).train().requires_grad_(True)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-5)
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(batch) % var.num_classes
    draws = {k: v.to(device) for k, v in family.draw(generator, torch.zeros(batch)).items()}
    if through_images:
        size, channels = tokenizer.image_size, tokenizer.in_channels
        real, fake = (torch.rand(batch, channels, size, size, generator=generator).mul(2).sub(1).to(device)
                      for _ in range(2))
        one_hot = torch.nn.functional.one_hot(labels, var.num_classes).float().to(device)
        inputs = StepInputs(real, one_hot, fake, one_hot, draws)
        objectives = dict(ddo=lambda: ddo_objective(family, net, ref, inputs, DDOConfig(alpha=10.0, beta=0.02))[0],
                          ce=lambda: mle_objective(family, net, inputs)[0])
    else:
        tokens = torch.randint(var.V, (2 * batch, var.L), generator=generator).to(device)
        x_in = torch.randn(2 * batch, var.L - var.first_l, var.Cvae, generator=generator).to(device)
        labels2, mask2 = torch.cat([labels, labels]).to(device), torch.cat([draws["uncond"]] * 2)

        def ddo():
            logr = family.log_ratio_tokens(net, ref, labels2, tokens, x_in, mask2)
            return torch.nn.functional.softplus(-0.02 * logr).mean()

        objectives = dict(ddo=ddo, ce=lambda: -family.sequence_log_prob(net, labels2[:batch], tokens[:batch],
                                                                         x_in[:batch], mask2[:batch]).mean())
    result = {}
    for name, objective in objectives.items():
        for r in range(repeats + 1):
            if r == 1:  # the first step is a warm-up
                _sync(device)
                start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            objective().backward()
            optimizer.step()
        _sync(device)
        result[name] = (time.perf_counter() - start) / repeats / batch
    return result


def report(name: str, var: VAR, tokenizer, args, *, batch: int, train_batch: int, through_images: bool,
           decode: bool) -> None:
    print(f"\n== {name}: depth {var.depth}, C {var.C}, L {var.L}, V {var.V}, "
          f"{sum(p.numel() for p in var.parameters()) / 1e6:.2f}M parameters, sampling batch {batch} (x2 CFG)")
    rows = {cache: time_sampling(var, tokenizer, batch=batch, repeats=args.repeats, device=args.device,
                                 use_kv_cache=cache, decode=decode) for cache in (True, False)}
    print(f"{'sampling':<16}{'images/s':>12}{'tokens/s':>14}")
    for cache, row in rows.items():
        print(f"{'KV cache' if cache else 'no cache':<16}{row['images_per_s']:>12.2f}{row['tokens_per_s']:>14.1f}")
    print(f"speed-up from the KV cache = {rows[True]['images_per_s'] / rows[False]['images_per_s']:.2f}x")
    steps = time_steps(var, tokenizer, batch=train_batch, repeats=args.repeats, device=args.device,
                       through_images=through_images)
    print(f"train step (batch {train_batch} real rows): CE {steps['ce'] * 1e3:.3f} ms/row, "
          f"DDO {steps['ddo'] * 1e3:.3f} ms/real row, DDO/CE = {steps['ddo'] / steps['ce']:.2f} (nominal 8/3 = 2.67)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="tiny models: 1 is fastest on a busy 2-core machine")
    parser.add_argument("--batch", type=int, default=16, help="digits sampling batch (d16 uses --d16-batch)")
    parser.add_argument("--d16-batch", type=int, default=2)
    parser.add_argument("--d16-depth", type=int, default=2, help="blocks of the d16-shaped model (0 = skip)")
    parser.add_argument("--train-batch", type=int, default=32, help="real rows per digits training step")
    parser.add_argument("--d16-train-batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"device={args.device} threads={args.threads} repeats={args.repeats}")
    var, tokenizer = digits_models(args.device)
    report("digits VAR", var, tokenizer, args, batch=args.batch, train_batch=args.train_batch,
           through_images=True, decode=True)
    if args.d16_depth > 0:
        var, tokenizer = d16_models(args.device, args.d16_depth)
        report("d16-shaped VAR", var, tokenizer, args, batch=args.d16_batch, train_batch=args.d16_train_batch,
               through_images=False, decode=False)


if __name__ == "__main__":
    main()
