r"""GPU benchmark of the paper-scale networks: diffusion (EDM, EDM2) and VAR; sampling and the DDO step.

Diffusion: random weights in the official architectures: the CIFAR-10 DDPM++ network (EDMPrecond +
SongUNet, 32×32, 55.7M parameters; 18 Heun steps = 35 NFE) and EDM2-S at 64×64 (Precond, 280M parameters;
EDM2 sampler, 32 steps = 63 NFE). For every (network, mode) it measures

- sampler images/s at `--sample-batch` images per call (after one warm-up call),
- DDO-step real rows/s: θ forward+backward and ref forward on [B real; B fake], Adam (ddo_lib.train),
- peak GPU memory of each measurement, and
- max |Δ| of the uint8 samples against the fp32 run (same seeds).

Modes: `fp32` (TF32 matmuls allowed), `bf16` (autocast of the forwards; ddo_lib.launch), `bf16+compile`
(torch.compile of θ for the DDO step and of the denoiser for sampling).

VAR (Tian et al. 2024): `var-d16` (310M parameters) and, only when named in `--networks`, `var-d30` (2.0B):
random weights in the official architecture (`official_var_kwargs(depth)`, init with the README's
`--alng 1e-3`, drop-path off) and the official VQVAE (V 4096, Cvae 32, ch 160, scales 1..16 → 256 px).
For every precision (`fp32`, `bf16`; VAR skips `bf16+compile`) and teacher-forced attention kernel
(`--var-attentions`: `mask` = one SDPA with the block-causal bias, `prefix` = mask-free SDPA per scale,
flash-eligible in bf16; ddo_lib.var.transformer) one row holds

- tokenize images/s: VQVAE encode + multi-scale quantisation of `--var-sample-batch` random images (the encode is
  part of the official step; the steps below use tokens computed once, so it is timed apart),
- sampling images/s with the KV cache (VARFamily.sample_with_tokens, cfg 1.0, top-k 0, one call of
  `--var-sample-batch` images after a warm-up call; decode included),
- DDO-AR step real rows/s (train.ddo_objective on [B real; B fake] token rows: θ forward+backward, ref forward
  under no_grad; Adam) and the cross-entropy (MLE) step on B real rows, their time ratio (nominally 8/3),
  and θ's teacher-forced forward+backward alone in ms,
- the largest DDO micro-batch that fits (doubling 1, 2, 4, ... up to `--var-micro-batch-cap`, catching CUDA
  out-of-memory) and the peak memory there; the timed steps use B = min(`--var-batch`, that micro-batch),
- accuracy against fp32 (`mask`): max |Δ log p| of the ref's sequence log-probs on the real rows (nats),
  and the fraction of sampled / tokenized indices equal to the fp32 ones (same seeds, same images).

Tokenisation and sampling do not use the teacher-forced kernel, so they are measured once per precision
(in the row of the first attention kernel; None in the others). Output: one JSON (`--out`, default
`$OUT/bench_gpu.json` when $OUT is set). Expected wall time on one H100/H200 (estimated from FLOP counts, not
yet timed): diffusion under 5 minutes, var-d16 (4 rows) about 2 minutes, so the default networks stay under
~8 minutes; var-d30 (named explicitly) adds about 5 minutes.

    python benchmarks/bench_gpu.py                      # on a GPU machine
    python benchmarks/bench_gpu.py --device cpu --quick # the same code path in seconds, CPU (a smoke check)
    python benchmarks/bench_gpu.py --device cpu --networks var-d16 --var-depth 5 --modes fp32 --var-sample-batch 2 \
        --var-batch 2 --var-micro-batch-cap 2 --repeats 3 --threads 1  # mask vs prefix at L = 680, CPU (minutes)
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import logging
import math
import os
import pathlib
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ddo_lib import launch, train
from ddo_lib.config import DDOConfig
from ddo_lib.edm.family import EDMFamily
from ddo_lib.edm.precond import network_from_official
from ddo_lib.edm.sampler import generate
from ddo_lib.family import disable_dropout
from ddo_lib.var.family import VARFamily
from ddo_lib.var.transformer import (
    ATTENTION_KINDS,
    IMAGENET_PATCH_NUMS_256,
    VAR,
    init_weights,
    official_var_kwargs,
    var_from_official,
)
from ddo_lib.var.vqvae import VQVAE, tokens_to_teacher_forcing_input, vqvae_from_official

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
VAR_NETWORKS = {"var-d16": 16, "var-d30": 30}  # depth; 310M and 2.0B parameters (Tian et al. 2024, Tab. 1)
VAR_DEFAULT = ("var-d16",)                      # var-d30 only when named in --networks
VAR_TOKENIZER = dict(vocab_size=4096, z_channels=32, ch=160, v_patch_nums=IMAGENET_PATCH_NUMS_256)  # 256 px
VAR_QUICK = dict(depth=2, tokenizer=dict(vocab_size=256, z_channels=8, ch=32, v_patch_nums=(1, 2, 3, 4)))  # 64 px
VAR_INIT_ADALN_GAMMA = 1e-3  # the official README's --alng for d16 / d20


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def free_memory(device: torch.device) -> None:
    """Drop unreferenced tensors and hand cached blocks back, so the next measurement starts clean."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def rows_per_second(step: Callable[[], None], rows: int, repeats: int, device: torch.device) -> float:
    """`rows` per call of `step`, timed over `repeats` calls after two warm-up calls."""
    for _ in range(2):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    synchronize(device)
    return rows * repeats / (time.perf_counter() - start)


# ------------------------------------------------------------------------------------------------ diffusion
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

    return rows_per_second(step, batch, repeats, device)


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


# ------------------------------------------------------------------------------------------------------ VAR
SAMPLING_KEYS = ("tokenize_images_per_second", "tokenize_token_agreement_vs_fp32", "sample_images_per_second",
                 "sample_peak_bytes", "sample_token_agreement_vs_fp32")


class PreTokenizedFamily(VARFamily):
    """VARFamily whose real rows were tokenized once: the steps time everything but the VQVAE encode."""

    def __init__(self, tokenizer: VQVAE, real_tokens: torch.Tensor, **options):
        super().__init__(tokenizer, **options)
        self.real_tokens = real_tokens                                                  # [N, L] int64
        self.real_input = tokens_to_teacher_forcing_input(tokenizer, self.split_scales(real_tokens))  # [N, L − 1, Cvae]

    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached (tokens [b, L], teacher-forcing input [b, L − 1, Cvae]) of the first b = len(x) rows."""
        return self.real_tokens[:len(x)], self.real_input[:len(x)]


@dataclasses.dataclass
class VARData:
    """A network's inputs and fp32 (`mask`) baselines; the step rows are these, tiled."""

    images: torch.Tensor    # [n, 3, H, W] random images in [−1, 1], the tokenizer's input
    labels: torch.Tensor    # [n] int64 classes of the samples and of the step rows
    tokens: torch.Tensor    # [n, L] fp32 tokens of `images`
    samples: torch.Tensor   # [n, L] token indices the ref sampled in fp32 (seeds 0..n − 1, `labels`), on the CPU
    logp: torch.Tensor      # [b] fp32 sequence log-probs of the ref on the first b real rows (b = --var-batch)


def tile(t: torch.Tensor, rows: int) -> torch.Tensor:
    """The rows of t [n, ...] repeated to [rows, ...] (step rows beyond the tokenized batch)."""
    return t.repeat(math.ceil(rows / len(t)), *[1] * (t.ndim - 1))[:rows]


def time_once(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """(seconds, result) of one call of `fn` after a warm-up call."""
    fn()
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def build_var(name: str, args, device: torch.device) -> tuple[VAR, VQVAE]:
    """Random weights in the official VAR / VQVAE architectures (`build_vae_var`), drop-path off, frozen."""
    depth, tokenizer = (VAR_QUICK["depth"], VAR_QUICK["tokenizer"]) if args.quick else (VAR_NETWORKS[name],
                                                                                         VAR_TOKENIZER)
    torch.manual_seed(0)
    with torch.device(device):
        vqvae = vqvae_from_official(dict(tokenizer, share_quant_resi=4, test_mode=True))
        var = var_from_official(official_var_kwargs(args.var_depth or depth, patch_nums=tokenizer["v_patch_nums"]),
                                vocab_size=tokenizer["vocab_size"], z_channels=tokenizer["z_channels"])
    init_weights(var, torch.Generator(device).manual_seed(0), init_adaln_gamma=VAR_INIT_ADALN_GAMMA)
    return disable_dropout(var).eval().requires_grad_(False), vqvae


@torch.no_grad()
def sequence_log_probs(family: PreTokenizedFamily, ref: VAR, labels: torch.Tensor, precision: str) -> torch.Tensor:
    """The ref's log p(tokens | class) of the first len(labels) cached real rows: fp32 [b]."""
    rows = len(labels)
    uncond = torch.zeros(rows, dtype=torch.bool, device=labels.device)
    with launch.autocast(labels.device, precision):
        return family.sequence_log_prob(ref, labels, family.real_tokens[:rows], family.real_input[:rows],
                                        uncond).float()


def var_data(family: VARFamily, ref: VAR, args, device: torch.device) -> VARData:
    """Random images, their tokens and the ref's samples in fp32 with the `mask` kernel (the baselines)."""
    n = args.var_sample_batch
    size = family.tokenizer.image_size
    images = (torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)
    labels = (torch.arange(n) % ref.num_classes).to(device)
    attention, ref.attention = ref.attention, "mask"
    tokens = family.tokens(images)[0]                                                     # [n, L]
    samples = family.sample_with_tokens(ref, range(n), labels, batch_size=n)[1]           # [n, L]
    cached = PreTokenizedFamily(family.tokenizer, tile(tokens, args.var_batch), uncond_rate=0.0)
    logp = sequence_log_probs(cached, ref, tile(labels, args.var_batch), "fp32")
    ref.attention = attention
    return VARData(images=images, labels=labels, tokens=tokens, samples=samples, logp=logp)


def measure_var_sampling(family: VARFamily, ref: VAR, data: VARData, precision: str, device) -> dict:
    """Tokenize and KV-cache sampling images/s, sampling peak memory, agreement with the fp32 indices."""
    n = len(data.labels)
    with launch.autocast(device, precision):
        tokenize_seconds, tokens = time_once(lambda: family.tokens(data.images)[0], device)
        reset_peak(device)
        sample_seconds, samples = time_once(
            lambda: family.sample_with_tokens(ref, range(n), data.labels, batch_size=n)[1], device)
    return dict(tokenize_images_per_second=n / tokenize_seconds,
                tokenize_token_agreement_vs_fp32=(tokens == data.tokens).float().mean().item(),
                sample_images_per_second=n / sample_seconds, sample_peak_bytes=peak_bytes(device),
                sample_token_agreement_vs_fp32=(samples == data.samples).float().mean().item())


def var_step_inputs(family: PreTokenizedFamily, data: VARData, rows: int, num_classes: int,
                    device) -> train.StepInputs:
    """`rows` real rows (cached tokens) and as many fake rows (the ref's sampled indices, scored as drawn).

    The tokens are cached, so the image tensors only carry the batch size: [rows, 1, 1, 1]."""
    placeholder = torch.zeros(rows, 1, 1, 1)
    labels = F.one_hot(tile(data.labels.cpu(), rows), num_classes).float()                 # [rows, classes]
    return train.StepInputs(real=placeholder, real_labels=labels, fake=placeholder, fake_labels=labels,
                            draws=family.draw(torch.Generator().manual_seed(0), placeholder),
                            fake_tokens=tile(data.samples, rows)).map(lambda t: t.to(device))


def var_step(objective: str, family: PreTokenizedFamily, net: VAR, ref: VAR,
             optimizer: torch.optim.Optimizer | None, inputs: train.StepInputs, precision: str) -> None:
    """One step of the DDO loss on [real; fake] ('ddo') or cross-entropy on the real rows ('mle');
    forward and backward only when `optimizer` is None."""
    net.zero_grad(set_to_none=True)
    if objective == "ddo":
        cfg = DDOConfig(batch_size=len(inputs.real))
        loss, _ = train.ddo_objective(family, net, ref, inputs, cfg, precision=precision)
    else:
        loss, _ = train.mle_objective(family, net, inputs, precision=precision)
    loss.backward()
    if optimizer is not None:
        optimizer.step()


def fits(step_at: Callable[[int], None], rows: int) -> bool:
    """Whether a step on `rows` real rows runs without CUDA running out of memory."""
    try:
        step_at(rows)
    except torch.cuda.OutOfMemoryError:
        return False
    return True


def largest_micro_batch(step_at: Callable[[int], None], cap: int, device) -> tuple[int, int | None]:
    """(largest real-row micro-batch of 1, 2, 4, ... ≤ cap whose step fits, peak bytes of that step)."""
    largest, peak, rows = 0, None, 1
    while rows <= cap:
        free_memory(device)
        reset_peak(device)
        if not fits(step_at, rows):
            break
        largest, peak, rows = rows, peak_bytes(device), 2 * rows
    free_memory(device)
    return largest, peak


def measure_var_steps(family: PreTokenizedFamily, ref: VAR, data: VARData, precision: str, args, device) -> dict:
    """Largest DDO micro-batch and its peak memory; DDO and CE step real rows/s at B = min(--var-batch, it)."""
    net = disable_dropout(copy.deepcopy(ref)).train().requires_grad_(True)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-5)

    def step_at(rows: int, objective: str = "ddo", optimizer=optimizer) -> Callable[[], None]:
        inputs = var_step_inputs(family, data, rows, ref.num_classes, device)
        return lambda: var_step(objective, family, net, ref, optimizer, inputs, precision)

    largest, peak = largest_micro_batch(lambda rows: step_at(rows)(), args.var_micro_batch_cap, device)
    batch = min(args.var_batch, largest)
    row = dict(micro_batch_cap=args.var_micro_batch_cap, max_micro_batch_real_rows=largest,
               peak_bytes_at_max_micro_batch=peak, step_batch_real_rows=batch)
    if batch == 0:
        return dict(row, ddo_real_rows_per_second=None, mle_real_rows_per_second=None,
                    ddo_over_mle_step_time=None, forward_backward_ms=None)
    ddo = rows_per_second(step_at(batch), batch, args.repeats, device)
    mle = rows_per_second(step_at(batch, "mle"), batch, args.repeats, device)
    forward_backward = rows_per_second(step_at(batch, "mle", None), batch, args.repeats, device)
    return dict(row, ddo_real_rows_per_second=ddo, mle_real_rows_per_second=mle, ddo_over_mle_step_time=mle / ddo,
                forward_backward_ms=1e3 * batch / forward_backward)


def add_ratios_vs_mask(rows: list[dict]) -> None:
    """Each non-`mask` row gets its step and forward+backward times over the `mask` row's of the same mode."""
    masks = {row["mode"]: row for row in rows if row["attention"] == "mask"}
    for row in rows:
        mask = masks.get(row["mode"])
        if row is mask or mask is None or None in (row["forward_backward_ms"], mask["forward_backward_ms"]):
            continue
        row["forward_backward_time_vs_mask"] = row["forward_backward_ms"] / mask["forward_backward_ms"]
        row["ddo_step_time_vs_mask"] = mask["ddo_real_rows_per_second"] / row["ddo_real_rows_per_second"]


def bench_var_network(name: str, args, device: torch.device) -> list[dict]:
    """The rows of one VAR network: every precision of --modes (fp32, bf16) × attention kernel."""
    ref, vqvae = build_var(name, args, device)
    family = VARFamily(vqvae, cfg=1.0, top_k=0)
    data = var_data(family, ref, args, device)
    step_rows = max(args.var_batch, args.var_micro_batch_cap)
    step_family = PreTokenizedFamily(vqvae, tile(data.tokens, step_rows), cfg=1.0, top_k=0)
    base = dict(network=name, parameters=sum(p.numel() for p in ref.parameters()), depth=ref.depth,
                tokens_per_image=ref.L, image_size=vqvae.image_size, sample_batch=args.var_sample_batch,
                cfg=family.cfg, top_k=family.top_k)
    rows = []
    for mode in [mode for mode in args.modes if mode in launch.PRECISIONS]:
        for index, attention in enumerate(args.var_attentions):
            ref.attention = attention
            row = dict(base, mode=mode, attention=attention)
            row.update(measure_var_sampling(family, ref, data, mode, device) if index == 0
                       else dict.fromkeys(SAMPLING_KEYS))
            logp = sequence_log_probs(step_family, ref, tile(data.labels, args.var_batch), mode)
            row["logp_max_abs_difference_vs_fp32"] = (logp - data.logp).abs().max().item()
            row.update(measure_var_steps(step_family, ref, data, mode, args, device))
            free_memory(device)
            rows.append(row)
            log.info("%s", row)
    add_ratios_vs_mask(rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=launch.DEVICES)
    parser.add_argument("--networks", nargs="+", default=[*NETWORKS, *VAR_DEFAULT],
                        choices=[*NETWORKS, *VAR_NETWORKS])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--sample-batch", type=int, default=128, help="images per sampler call")
    parser.add_argument("--ddo-batch", type=int, default=64, help="real rows per DDO step (plus as many fakes)")
    parser.add_argument("--repeats", type=int, default=10, help="timed DDO steps")
    parser.add_argument("--var-sample-batch", type=int, default=64, help="VAR images per sampling / tokenizer call")
    parser.add_argument("--var-batch", type=int, default=16, help="VAR real rows per timed DDO / CE step")
    parser.add_argument("--var-micro-batch-cap", type=int, default=256, help="largest VAR micro-batch tried")
    parser.add_argument("--var-attentions", nargs="+", default=list(ATTENTION_KINDS), choices=list(ATTENTION_KINDS),
                        help="teacher-forced attention kernels of the VAR rows")
    parser.add_argument("--var-depth", type=int, default=None,
                        help="blocks of the VAR stand-in (default: the network's; e.g. 5 for a CPU look at L = 680)")
    parser.add_argument("--quick", action="store_true", help="tiny stand-in networks (CPU smoke check)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's; 1 on a busy CPU)")
    parser.add_argument("--out", default=None, help="JSON path (default: $OUT/bench_gpu.json or ./bench_gpu.json)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.quick:
        args.sample_batch, args.ddo_batch, args.repeats = min(args.sample_batch, 8), min(args.ddo_batch, 4), 2
        args.var_sample_batch, args.var_batch = min(args.var_sample_batch, 4), min(args.var_batch, 2)
        args.var_micro_batch_cap = min(args.var_micro_batch_cap, 4)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = launch.resolve_device(args.device)
    launch.allow_tf32(device)
    results = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                   torch=torch.__version__, quick=args.quick, rows=[])
    if any(name in VAR_NETWORKS for name in args.networks) and "bf16+compile" in args.modes:
        log.info("VAR rows skip bf16+compile (the KV-cache sampler changes shapes at every scale)")
    for name in args.networks:
        bench = bench_var_network if name in VAR_NETWORKS else bench_network
        results["rows"] += bench(name, args, device)
    out = pathlib.Path(args.out or pathlib.Path(os.environ.get("OUT", ".")) / "bench_gpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
