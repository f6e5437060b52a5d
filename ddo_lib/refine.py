"""Explicit-discriminator baselines next to DDO on the default profile, and their generalization gap.

Issue [5/5] items 2–4. One frozen reference p_ref, one real training split and DDO's round-0 fake pool
feed three ways of using a discriminator:

- **DDO** — the implicit discriminator σ(β·(log p_θ − log p_ref)) *is* the generator (Zheng et al. 2025);
- **Discriminator Guidance** — an explicit time-dependent d_φ whose log-odds gradient corrects the score
  at sampling time (Kim et al. 2022; `ddo_lib.guidance`), at one extra forward+backward per NFE;
- **Seasoning / SIR** — reweighting candidate samples of p_ref by e^{γλ} (arXiv 2603.18817;
  `ddo_lib.seasoning`), at the cost of the extra candidates.

The generalization gap is measured twice: as discriminator accuracy on training reals vs the pool
(what the discriminator was fitted on) against held-out reals vs fresh samples, for explicit
discriminators of several widths and training-set sizes (the `dg_width` discriminator refitted on
fractions of the training split) and for DDO's implicit one; and as the Fréchet distance of generated
images to an equal-sized subset of the training images against the held-out images.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ddo_lib import data as data_lib
from ddo_lib import metrics, seasoning
from ddo_lib.guidance import DiscriminatorConfig, GuidedDenoiser, discriminator_logits, train_discriminator
from ddo_lib.pretrain import step_generator

FRESH_SEED_BASE = 30_000_000       # fresh p_ref samples for held-out accuracies
CANDIDATE_SEED_BASE = 40_000_000   # SIR candidates


@dataclasses.dataclass(frozen=True)
class RefineConfig:
    """params.yaml section `refine` (studies pipeline, notebook 07)."""

    widths: tuple[int, ...] = (8, 32)       # discriminator capacities (first conv stage channels)
    steps: int = 1000                       # discriminator Adam steps
    batch_size: int = 64
    lr: float = 1e-3
    dg_weights: tuple[float, ...] = (1.0, 2.0)   # DG w (Kim et al.: 1 conditional, 2 unconditional CIFAR-10)
    dg_width: int = 32                      # the discriminator used for DG and SIR
    sir_factor: int = 4                     # candidates per output image
    sir_sigma: float = 0.5                  # σ at which the SIR logit is read
    sir_exponents: tuple[float, ...] = (0.25, 1.0)
    gap_sigmas: tuple[float, ...] = (0.05, 0.2, 0.5)
    train_fractions: tuple[float, ...] = (0.25, 0.5)  # smaller training sets for the dg_width discriminator
    beta: float = 0.5                       # β of DDO's implicit discriminator (the ddo section's)
    num_images: int = 2000                  # generated images per scored model (evaluation seeds 0..N−1)
    sample_steps: int = 18
    seed: int = 0

    def smoke(self) -> "RefineConfig":
        return dataclasses.replace(self, widths=(8,), steps=5, dg_weights=(1.0,), dg_width=8, sir_factor=2,
                                   sir_exponents=(1.0,), gap_sigmas=(0.2,), num_images=40, sample_steps=3,
                                   train_fractions=(0.5,))

    def discriminator(self, width: int) -> DiscriminatorConfig:
        return DiscriminatorConfig(steps=self.steps, batch_size=self.batch_size, lr=self.lr, width=width,
                                   seed=self.seed, log_every=max(self.steps // 10, 1))


def _correct(logit: torch.Tensor) -> torch.Tensor:
    """1 where the logit is positive, ½ where it is exactly 0 (a tie), 0 elsewhere."""
    return (logit > 0).float() + 0.5 * (logit == 0).float()


def accuracy(logit_real: torch.Tensor, logit_fake: torch.Tensor) -> float:
    """Balanced accuracy of a logit (real > 0, fake < 0, ties count ½): [N], [M] -> float in [0, 1]."""
    return 0.5 * (_correct(logit_real).mean().item() + _correct(-logit_fake).mean().item())


def _gap(logits, train, held_out, pool: tuple, fresh: tuple, sigma: float | None) -> dict:
    """Balanced accuracy of `logits(images, labels)` on train vs pool and on held-out vs fresh, and their gap."""
    train_acc = accuracy(logits(train.images, train.labels), logits(*pool))
    held_acc = accuracy(logits(held_out.images, held_out.labels), logits(*fresh))
    return dict(sigma=sigma, train_images=len(train.images), train_accuracy=train_acc, held_out_accuracy=held_acc,
                gap=train_acc - held_acc)


def discriminator_gap(discriminator, train, held_out, pool: tuple, fresh: tuple, sigma: float) -> dict:
    """Accuracy of an explicit discriminator at noise level σ: training reals vs the pool it was fitted on,
    and held-out reals vs fresh samples of the same p_ref. Datasets: `ddo_lib.data.Dataset`; pool/fresh:
    (uint8 images [M, C, H, W], int labels [M])."""
    labelled = discriminator.label_dim > 0

    def logits(images, labels):
        return discriminator_logits(discriminator, images, labels if labelled else None, sigma=sigma)

    return _gap(logits, train, held_out, pool, fresh, sigma)


@torch.no_grad()
def implicit_logits(family, net, ref, images: torch.Tensor, labels: torch.Tensor, label_dim: int, beta: float,
                    seed: int, batch_size: int = 256) -> torch.Tensor:
    """DDO's implicit discriminator logit β·(log p_θ − log p_ref) [N] of uint8 images (family draws seeded)."""
    parts = []
    for start in range(0, len(images), batch_size):
        x = data_lib.to_float(images[start:start + batch_size])
        onehot = data_lib.one_hot(labels[start:start + batch_size], label_dim) if label_dim else None
        draws = family.draw(step_generator(seed, start, salt=7), x)
        parts.append(beta * family.log_ratio(net, ref, x, onehot, draws).float())
    return torch.cat(parts)


def implicit_gap(family, net, ref, train, held_out, pool: tuple, fresh: tuple, *, beta: float, seed: int) -> dict:
    """`discriminator_gap` for DDO's implicit discriminator of a finetuned `net` against its `ref`."""
    def logits(images, labels):
        return implicit_logits(family, net, ref, images, labels, train.label_dim, beta, seed)

    return _gap(logits, train, held_out, pool, fresh, None)


def size_axis_gaps(train, held_out, pool: tuple, fresh: tuple, cfg: RefineConfig) -> list[dict]:
    """The training-set-size axis: the `dg_width` discriminator refitted on each fraction of the training
    split (fixed random subsets) against the same pool, its gap at every σ of `gap_sigmas`."""
    rows = []
    for fraction in cfg.train_fractions:
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"refine.train_fractions must lie in (0, 1), found {fraction}")
        part = train_subset(train, max(round(fraction * len(train.images)), 1), cfg.seed + 1)
        discriminator, _ = train_discriminator(part.images, pool[0], real_labels=part.labels, fake_labels=pool[1],
                                               label_dim=train.label_dim, cfg=cfg.discriminator(cfg.dg_width))
        rows += [dict(discriminator=f"explicit w{cfg.dg_width} n{len(part.images)}",
                      **discriminator_gap(discriminator, part, held_out, pool, fresh, sigma))
                 for sigma in cfg.gap_sigmas]
    return rows


def train_subset(train, size: int, seed: int):
    """A fixed random subset of the training split with `size` images (for equal-N Fréchet distances)."""
    index = torch.from_numpy(np.random.default_rng(seed).permutation(len(train.images))[:size])
    return data_lib.make_dataset(train.images[index], train.labels[index], name=f"train-{size}",
                                 label_dim=train.label_dim)


def metric_gap(images: torch.Tensor, train_subset_images: torch.Tensor, held_out_images: torch.Tensor,
               extractor, *, name: str) -> dict:
    """Fréchet distance (and precision/recall) of generated images to an equal-sized training subset and to
    the held-out images; gap = held-out − train (memorisation makes it grow)."""
    train_record = metrics.evaluate_images(images, train_subset_images, extractor, name=name)
    held_record = metrics.evaluate_images(images, held_out_images, extractor, name=name)
    return dict(fd_train=train_record["value"], fd_held_out=held_record["value"],
                fd_gap=held_record["value"] - train_record["value"],
                precision_held_out=held_record["precision"], recall_held_out=held_record["recall"])


def guided(net, discriminator, weight: float) -> GuidedDenoiser:
    """`net` with Discriminator Guidance of weight w (w = 0 returns D exactly)."""
    return GuidedDenoiser(net, discriminator, weight)


def sir_refine(candidates: torch.Tensor, labels: torch.Tensor, discriminator, *, n_out: int, sigma: float,
               exponent: float, seed: int) -> seasoning.Refined:
    """SIR over candidate samples of p_ref by e^{γλ(x, σ)}, within each class, without replacement."""
    logits = discriminator_logits(discriminator, candidates, labels if discriminator.label_dim else None,
                                  sigma=sigma)
    return seasoning.refine_images(candidates, logits, n_out, torch.Generator().manual_seed(seed), labels=labels,
                                   exponent=exponent, replacement=False)


def random_subset(candidates: torch.Tensor, labels: torch.Tensor, *, n_out: int, seed: int) -> seasoning.Refined:
    """The SIR control: the same candidates, resampled with constant weights (a class-balanced random subset)."""
    return seasoning.refine_images(candidates, torch.zeros(len(candidates)), n_out,
                                   torch.Generator().manual_seed(seed), labels=labels, replacement=False)


def score(name: str, images: torch.Tensor, real, train_subset_data, held_out, extractor, *,
          seconds: float | None = None, metric: str = "fd_digits") -> dict:
    """One scored model: the pipeline's metric against all real images plus the train/held-out gap."""
    record = metrics.evaluate_images(images, real.images, extractor, name=metric)
    record.update(metric_gap(images, train_subset_data.images, held_out.images, extractor, name=metric))
    record["model"] = name
    if seconds is not None:
        record["seconds_per_image"] = seconds / len(images)
    return record


def score_table(rows: list[dict]) -> str:
    """Markdown: metric, precision/recall, the FD gap and sampling cost per scored model."""
    lines = ["| model | fd_digits | precision | recall | FD to train subset | FD to held-out | gap | s/image |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cost = f"{r['seconds_per_image']:.4f}" if "seconds_per_image" in r else "–"
        lines.append(f"| {r['model']} | {r['value']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{r['fd_train']:.3f} | {r['fd_held_out']:.3f} | {r['fd_gap']:+.3f} | {cost} |")
    return "\n".join(lines) + "\n"


def gap_table(gaps: list[dict]) -> str:
    """Markdown: discriminator accuracy on train vs held-out, per discriminator, training-set size and σ."""
    lines = ["| discriminator | train images | σ | train accuracy | held-out accuracy | gap |",
             "|---|---|---|---|---|---|"]
    for g in gaps:
        sigma = "–" if g["sigma"] is None else f"{g['sigma']:g}"
        lines.append(f"| {g['discriminator']} | {g.get('train_images', '–')} | {sigma} | {g['train_accuracy']:.3f} | "
                     f"{g['held_out_accuracy']:.3f} | {g['gap']:+.3f} |")
    return "\n".join(lines) + "\n"


def summary(rows: list[dict], gaps: list[dict], cfg: RefineConfig) -> dict:
    """Flat metrics JSON of the study: `<model>_<field>` and `<discriminator>_sigma<σ>_<field>` values."""
    flat = dict(protocol="fd_digits on evaluation seeds 0..N-1 vs all real images; fd_train / fd_held_out "
                         "against equal-sized train subset / held-out split; accuracies balanced",
                num_images=cfg.num_images, widths=list(cfg.widths), dg_weights=list(cfg.dg_weights))
    for r in rows:
        for key in ("value", "precision", "recall", "fd_train", "fd_held_out", "fd_gap", "seconds_per_image",
                    "effective_sample_size"):
            if key in r:
                flat[f"{r['model']}_{key}"] = r[key]
    for g in gaps:
        prefix = g["discriminator"].replace(" ", "_").replace("(", "").replace(")", "")
        prefix += "" if g["sigma"] is None else f"_sigma{g['sigma']:g}"
        flat.update({f"{prefix}_{k}": g[k] for k in ("train_accuracy", "held_out_accuracy", "gap")})
    return flat


def plot(rows: list[dict], gaps: list[dict], path):
    """Left: fd_digits per model; right: train vs held-out discriminator accuracy."""
    import matplotlib.pyplot as plt  # noqa: PLC0415

    from ddo_lib.plots import save_figure  # noqa: PLC0415

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    left.bar(range(len(rows)), [r["value"] for r in rows], color="tab:blue")
    left.set_xticks(range(len(rows)), [r["model"] for r in rows], rotation=45, ha="right")
    left.set_ylabel("fd_digits (lower is better)")
    names = [g["discriminator"] + ("" if g["sigma"] is None else f" σ={g['sigma']:g}") for g in gaps]
    positions = torch.arange(len(gaps)).float()
    right.bar(positions - 0.2, [g["train_accuracy"] for g in gaps], width=0.4, label="train vs pool")
    right.bar(positions + 0.2, [g["held_out_accuracy"] for g in gaps], width=0.4, label="held-out vs fresh")
    right.axhline(0.5, color="black", lw=1, ls="--")
    right.set_xticks(positions.tolist(), names, rotation=45, ha="right")
    right.set_ylabel("balanced accuracy")
    right.legend()
    return save_figure(figure, path)
