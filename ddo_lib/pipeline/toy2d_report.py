"""Figures, tables and verdicts of the 2-D toy study (`ddo_lib.toys.toy2d`, notebook 00)."""
from __future__ import annotations

import itertools
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from ddo_lib.objective import VARIANTS
from ddo_lib.toys.toy2d import METRICS, Toy2DConfig, objectives, record_key


def figures(records: list[dict], images: dict, cfg: Toy2DConfig) -> dict:
    """The study's figures: 'heatmaps' (last round), 'rounds' (every round) and 'curves'."""
    return {"heatmaps": heatmap_figure(images, cfg, rounds=(cfg.rounds,)),
            "rounds": heatmap_figure(images, cfg, rounds=tuple(range(1, cfg.rounds + 1))),
            "curves": curves_figure(records, cfg)}


def tile_row(images: list[torch.Tensor]) -> torch.Tensor:
    """Images [R, R] -> one strip [R + 2, n·(R + 2)]: each scaled to max 1, square-rooted (to show faint
    mass) and framed by NaN (drawn white)."""
    tiles = [F.pad((image / image.max()).sqrt(), (1, 1, 1, 1), value=math.nan) for image in images]
    return torch.cat(tiles, dim=1)


def heatmap_figure(images: dict, cfg: Toy2DConfig, *, rounds: tuple[int, ...]):
    """Density heat-maps, one strip per (target, model, α, β): data, the MLE fit, then every objective
    (the variants at that row's (α, β), then the MLE control) after each round in `rounds`."""
    colour_map = plt.get_cmap("magma").copy()
    colour_map.set_bad("white")
    settings = list(zip(cfg.alphas, cfg.betas))
    runs = [[o for o in objectives(cfg) if o.alpha in (None, a) and o.beta in (None, b)] for a, b in settings]
    labels = ["data", "MLE fit"] + [f"{o.variant} r{r}" for o in runs[0] for r in rounds]
    figure, axes = plt.subplots(len(images) * len(settings), 1, squeeze=False,
                                figsize=(0.75 * len(labels) + 1, 0.95 * len(images) * len(settings)))
    rows = itertools.product(images, zip(settings, runs))
    for (pair, ((alpha, beta), row_runs)), axis in zip(rows, axes[:, 0]):
        keys = [("data", 0), ("mle", 0)] + [(o.key, r) for o in row_runs for r in rounds]
        strip = tile_row([images[pair][key] for key in keys])
        axis.imshow(strip.numpy(), origin="lower", cmap=colour_map, vmin=0.0, vmax=1.0, interpolation="nearest")
        width = strip.shape[0]
        axis.set_xticks([width * (i + 0.5) for i in range(len(labels))], labels, fontsize=6)
        axis.set_yticks([])
        axis.set_ylabel(f"{'/'.join(pair)}\nα={alpha:g} β={beta:g}", fontsize=7)
    figure.tight_layout()
    return figure


def curves_figure(records: list[dict], cfg: Toy2DConfig, metrics=("forward_kl", "reverse_kl", "modes_covered")):
    """Metric against round (round 0 = MLE fit) per objective (colour: variant, line style: (α, β)),
    one column per (target, model); KL axes are logarithmic."""
    pairs = list(dict.fromkeys((r["target"], r["model"]) for r in records))
    colours = {v: f"C{i}" for i, v in enumerate((*VARIANTS, "mle"))}
    styles = {(a, b): s for (a, b), s in zip(zip(cfg.alphas, cfg.betas), ("-", "--", ":", "-."))}
    figure, axes = plt.subplots(len(metrics), len(pairs), figsize=(3.0 * len(pairs), 2.3 * len(metrics)),
                                squeeze=False)
    for column, pair in enumerate(pairs):
        rows = [r for r in records if (r["target"], r["model"]) == pair]
        start = next(r for r in rows if r["round"] == 0)
        for metric, axis in zip(metrics, axes[:, column]):
            for o in objectives(cfg):
                line = [start] + [r for r in rows if record_key(r) == o.key and r["round"] > 0]
                axis.plot([r["round"] for r in line], [r[metric] for r in line], marker="o", ms=2,
                          color=colours[o.variant], ls=styles.get((o.alpha, o.beta), ":"), label=o.key)
            axis.set_yscale("log" if metric.endswith("_kl") else "linear")
            axis.set_title(f"{'/'.join(pair)}: {metric}", fontsize=8)
            axis.set_xlabel("round (0 = MLE fit)", fontsize=7)
            axis.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=5, ncol=2)
    figure.tight_layout()
    return figure


def _number(value) -> str:
    return "–" if value is None else f"{value:g}"


def records_markdown(records: list[dict]) -> str:
    """Markdown table: target × model × objective × (α, β) × round -> KLs (± s.e.) and mode metrics."""
    lines = ["| target | model | objective | α | β | round | forward KL | reverse KL | modes | precision "
             "| recall | k-NN precision | k-NN recall |", "|" + "---|" * 13]
    for r in records:
        lines.append(f"| {r['target']} | {r['model']} | {r['objective']} | {_number(r['alpha'])} "
                     f"| {_number(r['beta'])} | {r['round']} | {r['forward_kl']:.3f} ± {r['forward_kl_se']:.3f} "
                     f"| {r['reverse_kl']:.3f} ± {r['reverse_kl_se']:.3f} | {r['modes_covered']}/{r['num_modes']} "
                     f"| {r['precision']:.3f} | {r['recall']:.3f} | {r['knn_precision']:.3f} "
                     f"| {r['knn_recall']:.3f} |")
    return "\n".join(lines) + "\n"


def verdict(record: dict, control: dict) -> tuple[str, str]:
    """(forward, reverse): each KL of `record` is 'lower', 'higher' or 'same' as `control`'s, 'same' meaning
    within two combined Monte-Carlo standard errors."""
    def compare(metric: str) -> str:
        delta = record[metric] - control[metric]
        noise = 2 * math.hypot(record[f"{metric}_se"], control[f"{metric}_se"])
        return "same" if abs(delta) <= noise else ("lower" if delta < 0 else "higher")

    return compare("forward_kl"), compare("reverse_kl")


def findings_markdown(records: list[dict], cfg: Toy2DConfig) -> str:
    """One bullet per (target, model): the objectives grouped by their `verdict` against the MLE control
    after the last round (against the MLE fit when there is no control)."""
    lines = []
    for pair in dict.fromkeys((r["target"], r["model"]) for r in records):
        rows = [r for r in records if (r["target"], r["model"]) == pair]
        control_round = cfg.rounds if cfg.mle_control else 0
        control = next(r for r in rows if record_key(r) == "mle" and r["round"] == control_round)
        groups: dict[tuple[str, str], list[str]] = {}
        for r in rows:
            if r["round"] == cfg.rounds and record_key(r) != "mle":
                groups.setdefault(verdict(r, control), []).append(record_key(r))
        parts = [f"forward KL {f} / reverse KL {b}: {', '.join(keys)}" for (f, b), keys in sorted(groups.items())]
        lines.append(f"- **{'/'.join(pair)}** (vs MLE, round {control_round}): " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def metrics_summary(records: list[dict], cfg: Toy2DConfig) -> dict:
    """Flat metrics JSON: the protocol, then `{target}_{model}_{objective key}_round{k}_{metric}` values."""
    summary = {"protocol": "exact log-densities; KL by Monte Carlo on eval_size fresh samples; a mode is "
                           "covered if >= cover_fraction/M of model samples lie within 3 sigma of it; "
                           "precision = share of model samples within 3 sigma of a mode; recall = covered/M; "
                           "k-NN precision/recall (Kynkaanniemi et al. 2019, k=3) on knn_size samples",
               "alphas": list(cfg.alphas), "betas": list(cfg.betas), "rounds": cfg.rounds,
               "steps_per_round": cfg.steps_per_round, "eval_size": cfg.eval_size, "knn_size": cfg.knn_size,
               "cover_fraction": cfg.cover_fraction, "mode_std": cfg.mode_std, "seed": cfg.seed}
    for r in records:
        prefix = f"{r['target']}_{r['model']}_{record_key(r)}_round{r['round']}"
        summary.update({f"{prefix}_{metric}": r[metric] for metric in METRICS})
    return summary
