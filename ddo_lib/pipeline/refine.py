"""Explicit-discriminator baselines next to DDO on the default profile, and their generalization gap.

One frozen reference p_ref, one real training split and DDO's round-0 fake pool
feed three ways of using a discriminator:

- **DDO** — the implicit discriminator σ(β·(log p_θ − log p_ref)) *is* the generator (Zheng et al. 2025);
- **Discriminator Guidance** — an explicit time-dependent d_φ whose log-odds gradient corrects the score
  at sampling time (Kim et al. 2022; `ddo_lib.baselines.guidance`), at one extra forward+backward per NFE;
- **Seasoning / SIR** — reweighting candidate samples of p_ref by e^{γλ} (arXiv 2603.18817;
  `ddo_lib.baselines.seasoning`), at the cost of the extra candidates.

The generalization gap is measured twice: as discriminator accuracy on training reals vs the pool
(what the discriminator was fitted on) against held-out reals vs fresh samples, for explicit
discriminators of several widths and training-set sizes (the `dg_width` discriminator refitted on
fractions of the training split) and for DDO's implicit one; and as the Fréchet distance of generated
images to an equal-sized subset of the training images against the held-out images.
"""
from __future__ import annotations

import dataclasses
import re
import time

import matplotlib.pyplot as plt
import torch

from ddo_lib import data as data_lib
from ddo_lib.baselines import seasoning
from ddo_lib.baselines.guidance import (
    DiscriminatorConfig,
    GuidedDenoiser,
    discriminator_logits,
    train_discriminator,
)
from ddo_lib.checkpoint import load_checkpoint
from ddo_lib.eval import features, metrics
from ddo_lib.pipeline import families, subsets
from ddo_lib.pipeline.params import RefineConfig
from ddo_lib.pipeline.plots import save_figure
from ddo_lib.seeds import STREAM_IMPLICIT, candidate_seeds, fresh_seeds, step_generator


def discriminator_config(cfg: RefineConfig, width: int) -> DiscriminatorConfig:
    """The explicit discriminator of `width` channels with the study's steps, batch, lr and seed."""
    return DiscriminatorConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, width=width,
                               seed=cfg.seed, log_every=max(cfg.steps // 10, 1))


def _correct(logit: torch.Tensor) -> torch.Tensor:
    """1 where the logit is positive, ½ where it is exactly 0 (a tie), 0 elsewhere."""
    return (logit > 0).float() + 0.5 * (logit == 0).float()


def accuracy(logit_real: torch.Tensor, logit_fake: torch.Tensor) -> float:
    """Balanced accuracy of a logit (real > 0, fake < 0, ties count ½): [N], [M] -> float in [0, 1]."""
    return 0.5 * (_correct(logit_real).mean().item() + _correct(-logit_fake).mean().item())


def accuracy_se(logit_real: torch.Tensor, logit_fake: torch.Tensor) -> float:
    """Binomial standard error of `accuracy`: ½·sqrt(a_r(1 − a_r)/N + a_f(1 − a_f)/M), a_r and a_f the
    accuracies on the real [N] and fake [M] logits (independent samples)."""
    parts = [_correct(logit_real), _correct(-logit_fake)]
    return 0.5 * sum((p.mean() * (1 - p.mean()) / len(p)).item() for p in parts) ** 0.5


def _gap(logits, train, held_out, pool: tuple, fresh: tuple, sigma: float | None) -> dict:
    """Balanced accuracy of `logits(images, labels)` on train vs pool and on held-out vs fresh, their gap and
    its standard error (the two sides are independent samples)."""
    train_logits = (logits(train.images, train.labels), logits(*pool))
    held_logits = (logits(held_out.images, held_out.labels), logits(*fresh))
    train_acc, held_acc = accuracy(*train_logits), accuracy(*held_logits)
    gap_se = (accuracy_se(*train_logits) ** 2 + accuracy_se(*held_logits) ** 2) ** 0.5
    return dict(sigma=sigma, train_images=len(train.images), train_accuracy=train_acc, held_out_accuracy=held_acc,
                gap=train_acc - held_acc, gap_se=gap_se)


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
        draws = family.draw(step_generator(seed, start, STREAM_IMPLICIT), x)
        parts.append(beta * family.log_ratio(net, ref, x, onehot, draws).float())
    return torch.cat(parts)


def implicit_gap(family, net, ref, train, held_out, pool: tuple, fresh: tuple, *, beta: float, seed: int) -> dict:
    """`discriminator_gap` for DDO's implicit discriminator of a finetuned `net` against its `ref`."""
    def logits(images, labels):
        return implicit_logits(family, net, ref, images, labels, train.label_dim, beta, seed)

    return _gap(logits, train, held_out, pool, fresh, None)


def fit_size_axis(train, pool: tuple, cfg: RefineConfig) -> dict[int, tuple]:
    """The training-set-size axis of the explicit discriminator: the `dg_width` discriminator refitted on each
    fraction of the training split (`subsets.fraction_subset`) against the same pool.
    Returns {training images: (the subset, its discriminator)}."""
    fitted = {}
    for fraction in cfg.train_fractions:
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"refine.train_fractions must lie in (0, 1), found {fraction}")
        part = subsets.fraction_subset(train, fraction, cfg.subset_seed())
        discriminator, _ = train_discriminator(part.images, pool[0], real_labels=part.labels, fake_labels=pool[1],
                                               label_dim=train.label_dim, cfg=discriminator_config(cfg, cfg.dg_width))
        fitted[len(part.images)] = (part, discriminator)
    return fitted


def size_axis_gaps(fitted: dict[int, tuple], held_out, pool: tuple, fresh: tuple, cfg: RefineConfig) -> list[dict]:
    """`discriminator_gap` of every `fit_size_axis` discriminator at every σ of `gap_sigmas`, on its own subset."""
    return [dict(discriminator=f"explicit w{cfg.dg_width} n{size}",
                 **discriminator_gap(discriminator, part, held_out, pool, fresh, sigma))
            for size, (part, discriminator) in fitted.items() for sigma in cfg.gap_sigmas]


def implicit_size_gaps(family, ref, nets: dict, part, held_out, pool: tuple, fresh: tuple, *, beta: float,
                       seed: int) -> list[dict]:
    """`implicit_gap` of networks finetuned on the training subset `part` (their own training reals), one
    row per name of `nets` ({'ddo': net, 'mle': net}), named `implicit (<name>) n<size>`."""
    return [dict(discriminator=f"implicit ({name}) n{len(part.images)}",
                 **implicit_gap(family, net, ref, part, held_out, pool, fresh, beta=beta, seed=seed))
            for name, net in nets.items()]


def size_series(gaps: list[dict]) -> dict[str, list[tuple[int, float, float]]]:
    """Gap rows grouped into curves over the training-set size: label -> [(train images, gap, SE)] sorted by
    size (SE 0 where unknown); the label drops a row name's ` n<size>` suffix and adds its σ (explicit
    discriminators)."""
    series: dict[str, list[tuple[int, float, float]]] = {}
    for g in gaps:
        label = re.sub(r" n\d+$", "", g["discriminator"]) + ("" if g["sigma"] is None else f" σ={g['sigma']:g}")
        series.setdefault(label, []).append((g["train_images"], g["gap"], g.get("gap_se", 0.0)))
    return {label: sorted(points) for label, points in series.items()}


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


def sample_each(family, nets: dict, seeds, labels: torch.Tensor) -> dict[str, tuple[torch.Tensor, float]]:
    """{name: (uint8 images [N, C, H, W], sampling seconds)} of every network on the same seeds and labels.
    A network object listed under several names (the reference as the control of each training-set size) is
    sampled once: same weights and seeds give the same images; its seconds are those of that one sampling."""
    done: dict[int, tuple[torch.Tensor, float]] = {}
    for net in nets.values():
        if id(net) not in done:
            start = time.perf_counter()
            images = family.sample(net, seeds, labels)
            done[id(net)] = (images, time.perf_counter() - start)
    return {name: done[id(net)] for name, net in nets.items()}


def guided_variants(net, discriminator, weights, *, suffix: str = "") -> dict[str, GuidedDenoiser]:
    """{`dg_w<w><suffix>`: `net` guided by `discriminator` with weight w} for every w of `weights`."""
    return {f"dg_w{w}{suffix}": guided(net, discriminator, w) for w in weights}


def sir_variants(candidates: torch.Tensor, labels: torch.Tensor, discriminator, cfg: RefineConfig, *,
                 suffix: str = "") -> dict[str, seasoning.Refined]:
    """{`sir_gamma<γ><suffix>`: `sir_refine` of the candidates} for every γ of `cfg.sir_exponents`."""
    return {f"sir_gamma{g}{suffix}": sir_refine(candidates, labels, discriminator, n_out=cfg.num_images,
                                                 sigma=cfg.sir_sigma, exponent=g, seed=cfg.seed)
            for g in cfg.sir_exponents}


def score(name: str, images: torch.Tensor, real, trained_on, held_out, extractor, *, seed: int,
          seconds: float | None = None, metric: str = "fd_digits", **extra) -> dict:
    """One scored model: the pipeline's metric against all real images plus the train/held-out gap, the
    train side an equal-sized random subset (`seed`) of `trained_on`, the images the model (or its
    discriminator) was trained on. `extra` fields are added to the record."""
    if len(trained_on.images) < len(held_out.images):
        raise ValueError(f"{name}: the FD gap compares equal-sized real sets, but the model saw "
                         f"{len(trained_on.images)} training images < {len(held_out.images)} held-out images "
                         "(raise refine.train_fractions)")
    record = metrics.evaluate_images(images, real.images, extractor, name=metric)
    subset = subsets.train_subset(trained_on, len(held_out.images), seed)
    record.update(metric_gap(images, subset.images, held_out.images, extractor, name=metric))
    record.update(model=name, **extra)
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


def _se(gap: dict) -> str:
    return f" ± {gap['gap_se']:.3f}" if "gap_se" in gap else ""


def gap_table(gaps: list[dict]) -> str:
    """Markdown: discriminator accuracy on train vs held-out, per discriminator, training-set size and σ."""
    lines = ["| discriminator | train images | σ | train accuracy | held-out accuracy | gap ± SE |",
             "|---|---|---|---|---|---|"]
    for g in gaps:
        sigma = "–" if g["sigma"] is None else f"{g['sigma']:g}"
        lines.append(f"| {g['discriminator']} | {g.get('train_images', '–')} | {sigma} | {g['train_accuracy']:.3f} | "
                     f"{g['held_out_accuracy']:.3f} | {g['gap']:+.3f}{_se(g)} |")
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
        flat.update({f"{prefix}_{k}": g[k] for k in ("train_accuracy", "held_out_accuracy", "gap", "gap_se") if k in g})
    return flat


def plot(rows: list[dict], gaps: list[dict], path):
    """Left: fd_digits per model; right: train vs held-out discriminator accuracy."""
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


def plot_size_axis(gaps: list[dict], path):
    """Generalization gap (train − held-out accuracy, ± 1 SE) against the training-set size, one curve per
    discriminator (explicit ones per σ), log-scaled x axis."""
    figure, axis = plt.subplots(figsize=(6.5, 4.0))
    for label, points in size_series(gaps).items():
        sizes, values, errors = zip(*points)
        axis.errorbar(sizes, values, yerr=errors, marker="o", capsize=3, label=label,
                      ls="--" if label.startswith("implicit") else "-")
    axis.axhline(0.0, color="black", lw=1)
    axis.set_xscale("log")
    axis.set_xlabel("training images")
    axis.set_ylabel("train − held-out accuracy")
    axis.set_title("generalization gap vs training-set size")
    axis.legend(fontsize=7)
    return save_figure(figure, path)


# --- The study ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class StudyInputs:
    """The files the refine study reads (paths from `studies/dvc.yaml`)."""

    train: str                  # training split (.npz)
    held_out: str               # held-out split (.npz)
    classifier: str             # the domain feature extractor behind fd_digits
    reference: str              # p_ref (ddo_lib reference file)
    ddo: str                    # DDO's best model of round 1
    mle: str                    # the MLE control's best model of round 1
    pool: str                   # DDO's round-1 fake pool (the explicit discriminators' fakes)
    size_runs: dict = dataclasses.field(default_factory=dict)  # {key: {train, ddo, mle, pool}} per subset


def _pool(path) -> tuple[torch.Tensor, torch.Tensor]:
    saved = load_checkpoint(path)
    return saved["images"], saved["labels"]


def _fresh(family, ref_net, count: int, label_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` fresh class-balanced samples of p_ref on the fresh seed range."""
    labels = data_lib.class_balanced_labels(count, label_dim)
    return family.sample(ref_net, fresh_seeds(len(labels)), labels), labels


def run_study(cfg: RefineConfig, inputs: StudyInputs, *, P_mean: float = 0.0,
              P_std: float = 1.0) -> tuple[list[dict], list[dict]]:
    """Explicit discriminators next to DDO: (score rows, generalization-gap rows).

    σ ~ logN(P_mean, P_std²) for DDO's implicit logits (the `ddo` section's). Scored models sample the
    evaluation seeds 0..N−1; fresh samples and SIR candidates have their own ranges (`ddo_lib.seeds`).
    """
    # Inputs.
    train, held = data_lib.load_dataset(inputs.train), data_lib.load_dataset(inputs.held_out)
    ref = families.load_reference(inputs.reference)
    nets = {"reference": ref.net, "ddo": families.load_reference(inputs.ddo).net,
            "mle": families.load_reference(inputs.mle).net}
    family = families.generator_family(ref, sample_steps=cfg.sample_steps, P_mean=P_mean, P_std=P_std)
    fakes = _pool(inputs.pool)
    fresh = _fresh(family, ref.net, len(held.images), train.label_dim)
    extractor = features.load_classifier(inputs.classifier)

    # Generalization gap: explicit discriminators of every width, DDO's and MLE's implicit ones.
    discriminators = {width: train_discriminator(train.images, fakes[0], real_labels=train.labels,
                                                 fake_labels=fakes[1], label_dim=train.label_dim,
                                                 cfg=discriminator_config(cfg, width), progress=False)[0]
                      for width in cfg.widths}
    gaps = [dict(discriminator=f"explicit w{width}", **discriminator_gap(d, train, held, fakes, fresh, sigma))
            for width, d in discriminators.items() for sigma in cfg.gap_sigmas]
    gaps += [dict(discriminator=f"implicit ({name})", **implicit_gap(family, nets[name], ref.net, train, held,
                                                                   fakes, fresh, beta=cfg.beta, seed=cfg.seed))
             for name in ("ddo", "mle")]

    # Training-set-size axis: the explicit discriminator refitted, and DDO / MLE finetuned on subsets.
    fitted = fit_size_axis(train, fakes, cfg)
    gaps += size_axis_gaps(fitted, held, fakes, fresh, cfg)
    trained_on = {}                                    # the training images each size model saw
    for run in inputs.size_runs.values():
        part, size_nets = data_lib.load_dataset(run["train"]), {n: families.load_reference(run[n]).net
                                                                for n in ("ddo", "mle")}
        gaps += implicit_size_gaps(family, ref.net, size_nets, part, held, _pool(run["pool"]), fresh,
                                   beta=cfg.beta, seed=cfg.seed)
        size_nets["reference"] = ref.net               # the FD-gap control on the same real images
        nets.update({f"{name}_n{len(part.images)}": net for name, net in size_nets.items()})
        trained_on.update({f"{name}_n{len(part.images)}": part for name in size_nets})

    # Discriminator Guidance at every training-set size, then every network on the evaluation seeds.
    fitted[len(train.images)] = (train, discriminators[cfg.dg_width])
    suffix = {size: "" if part is train else f"_n{size}" for size, (part, _) in fitted.items()}
    for size, (part, discriminator) in fitted.items():
        nets.update(guided_variants(ref.net, discriminator, cfg.dg_weights, suffix=suffix[size]))
        trained_on.update({f"dg_w{w}{suffix[size]}": part for w in cfg.dg_weights})
    real = data_lib.concatenate([train, held])
    labels = data_lib.class_balanced_labels(cfg.num_images, train.label_dim)
    samples = sample_each(family, nets, range(cfg.num_images), labels)
    rows = [score(name, images, real, trained_on.get(name, train), held, extractor, seed=cfg.seed, seconds=seconds)
            for name, (images, seconds) in samples.items()]

    # SIR over candidates of p_ref, against a random subset of the same candidates.
    candidate_labels = data_lib.class_balanced_labels(cfg.sir_factor * cfg.num_images, train.label_dim)
    candidates = family.sample(ref.net, candidate_seeds(len(candidate_labels)), candidate_labels)
    picked = {"sir_control": random_subset(candidates, candidate_labels, n_out=cfg.num_images, seed=cfg.seed)}
    for size, (part, discriminator) in fitted.items():
        picked.update(sir_variants(candidates, candidate_labels, discriminator, cfg, suffix=suffix[size]))
        trained_on.update({f"sir_gamma{g}{suffix[size]}": part for g in cfg.sir_exponents})
    rows += [score(name, r.images, real, trained_on.get(name, train), held, extractor, seed=cfg.seed,
                   effective_sample_size=r.effective_sample_size) for name, r in picked.items()]
    return rows, gaps
