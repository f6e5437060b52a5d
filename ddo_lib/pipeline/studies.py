"""Aggregation of the study stages (`studies/dvc.yaml`): seeds, loss variants, baselines.

Every study writes the same flat metric records as the main evaluation (`ddo_lib.pipeline.evaluation`);
these functions turn them into claims: mean ± sd over seeds, the DDO − MLE gap against twice its standard
error, and per-variant tables.
"""
from __future__ import annotations

import math
import pathlib
from typing import Sequence

import matplotlib.pyplot as plt

from ddo_lib.pipeline.plots import save_figure
from ddo_lib.pipeline.records import final_of_run, read_records, update_block

BEGIN, END = "<!-- studies:begin -->", "<!-- studies:end -->"


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value)."""
    if not values:
        raise ValueError("mean_sd of no values")
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def seed_summary(per_seed: dict[int, list[dict]]) -> dict:
    """Claims over seeds from {seed: evaluation records of that seed (reference, ddo_round*, mle_round*)}.

    Per seed: the final DDO round and the final MLE-control round (the same selection rule for both:
    selection seeds only, as in the main report). The DDO − MLE gap is paired by seed;
    its standard error is sd/√n. `ddo_beats_mle` requires the mean gap below −2·SE.
    """
    if len(per_seed) < 2:
        raise ValueError(f"a seed study needs at least 2 seeds, found {sorted(per_seed)}")
    rows = []
    for seed, records in sorted(per_seed.items()):
        reference = next(r for r in records if r["model"] == "reference")
        ddo, mle = final_of_run(records, "ddo"), final_of_run(records, "mle")
        if ddo is None or mle is None:
            raise ValueError(f"seed {seed}: records need both ddo_round* and mle_round* models")
        rows.append(dict(seed=seed, reference=reference["value"], ddo=ddo["value"], mle=mle["value"],
                         ddo_precision=ddo["precision"], reference_precision=reference["precision"],
                         ddo_recall=ddo["recall"], reference_recall=reference["recall"],
                         ddo_change=(ddo["value"] - reference["value"]) / reference["value"],
                         gap=ddo["value"] - mle["value"]))
    summary = dict(seeds=[r["seed"] for r in rows], rows=rows)
    for key in ("reference", "ddo", "mle", "ddo_change", "gap", "ddo_precision", "reference_precision"):
        summary[f"{key}_mean"], summary[f"{key}_sd"] = mean_sd([r[key] for r in rows])
    summary["gap_se"] = summary["gap_sd"] / math.sqrt(len(rows))
    summary["ddo_beats_mle"] = summary["gap_mean"] < -2.0 * summary["gap_se"]
    summary["ddo_gain_20pct"] = summary["ddo_change_mean"] <= -0.20
    summary["precision_up"] = summary["ddo_precision_mean"] > summary["reference_precision_mean"]
    return summary


def seed_table(summary: dict) -> str:
    """Markdown: one row per seed plus mean ± sd, and a sentence with the verdicts."""
    lines = ["| seed | reference | final DDO | final MLE control | DDO vs reference | DDO − MLE |",
             "|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        lines.append(f"| {r['seed']} | {r['reference']:.3f} | {r['ddo']:.3f} | {r['mle']:.3f} | "
                     f"{100 * r['ddo_change']:+.1f} % | {r['gap']:+.3f} |")
    s = summary
    lines.append(f"| mean ± sd | {s['reference_mean']:.3f} ± {s['reference_sd']:.3f} | {s['ddo_mean']:.3f} ± "
                 f"{s['ddo_sd']:.3f} | {s['mle_mean']:.3f} ± {s['mle_sd']:.3f} | "
                 f"{100 * s['ddo_change_mean']:+.1f} ± {100 * s['ddo_change_sd']:.1f} % | "
                 f"{s['gap_mean']:+.3f} ± {s['gap_sd']:.3f} |")
    verdict = (f"Over {len(s['rows'])} seeds DDO {'beats' if s['ddo_beats_mle'] else 'does not beat'} the "
               f"equal-compute MLE control (mean gap {s['gap_mean']:+.3f}, 2·SE = {2 * s['gap_se']:.3f}); "
               f"the ≥ 20 % target vs the reference is {'met' if s['ddo_gain_20pct'] else 'not met'} "
               f"({100 * s['ddo_change_mean']:+.1f} %); precision "
               f"{'rises' if s['precision_up'] else 'does not rise'} ({s['reference_precision_mean']:.3f} → "
               f"{s['ddo_precision_mean']:.3f}).")
    return "\n".join(lines) + "\n\n" + verdict + "\n"


def variant_table(reference: dict, per_variant: dict[str, list[dict]]) -> str:
    """Markdown: per loss variant, its final round's metric, precision and recall vs the reference."""
    lines = ["| variant | final round | metric | vs reference | precision | recall |", "|---|---|---|---|---|---|"]
    lines.append(f"| reference | 0 | {reference['value']:.3f} | – | {reference['precision']:.3f} | "
                 f"{reference['recall']:.3f} |")
    for name, records in per_variant.items():
        final = final_of_run(records, "ddo")
        if final is None:
            raise ValueError(f"variant {name}: no ddo_round* records")
        change = 100 * (final["value"] - reference["value"]) / reference["value"]
        lines.append(f"| {name} | {final['round']} | {final['value']:.3f} | {change:+.1f} % | "
                     f"{final['precision']:.3f} | {final['recall']:.3f} |")
    return "\n".join(lines) + "\n"


def readme_block(summary: dict) -> str:
    """The README studies block: the seed table and its verdict (loss variants and baselines:
    `metrics/study/studies.md`)."""
    return (seed_table(summary) + "\nLoss variants, explicit discriminators and the generalization gap: "
            "`metrics/study/studies.md`.\n")


def update_readme(readme_path, body: str) -> pathlib.Path:
    """Replace the studies block of README.md (between BEGIN and END)."""
    return update_block(readme_path, body, begin=BEGIN, end=END)


def seed_folders(folder) -> dict[int, pathlib.Path]:
    """{seed: folder} for the sub-folders `s<seed>` of a seed-study folder."""
    found = {int(p.name[1:]): p for p in pathlib.Path(folder).glob("s*") if p.is_dir() and p.name[1:].isdigit()}
    if not found:
        raise FileNotFoundError(f"{folder}: no seed folders s<seed>/")
    return dict(sorted(found.items()))


def plot_seeds(summary: dict, path) -> pathlib.Path:
    """Per-seed reference, final DDO and final MLE control (lines join one seed's points)."""
    figure, axis = plt.subplots(figsize=(5.0, 3.5))
    for row in summary["rows"]:
        axis.plot([0, 1, 2], [row["reference"], row["ddo"], row["mle"]], "o-", alpha=0.7, label=f"seed {row['seed']}")
    axis.set_xticks([0, 1, 2], ["reference", "final DDO", "final MLE control"])
    axis.set_ylabel("metric (lower is better)")
    axis.grid(alpha=0.3)
    axis.legend()
    return save_figure(figure, path)


def plot_variants(reference: dict, per_variant: dict[str, list[dict]], path) -> pathlib.Path:
    """Best metric per loss variant, with the reference as a horizontal line."""
    names = list(per_variant)
    values = [final_of_run(per_variant[n], "ddo")["value"] for n in names]
    figure, axis = plt.subplots(figsize=(1.0 + 0.8 * len(names), 3.5))
    axis.bar(range(len(names)), values, color="tab:blue")
    axis.axhline(reference["value"], color="black", lw=1, ls="--", label="reference")
    axis.set_xticks(range(len(names)), names)
    axis.set_ylabel(f"{reference.get('metric', 'metric')} (lower is better)")
    axis.legend()
    return save_figure(figure, path)


def seed_records(main_eval_dir, seeds_dir) -> dict[int, list[dict]]:
    """{seed: evaluation records}: seed 0 from the default pipeline, the others from `s<seed>/` folders."""
    per_seed = {0: read_records(main_eval_dir)}
    per_seed.update({seed: read_records(folder) for seed, folder in seed_folders(seeds_dir).items()})
    return per_seed


def variant_records(default_run: list[dict], variants_dir) -> dict[str, list[dict]]:
    """{variant: evaluation records}: the default run (bce) first, then every folder of `variants_dir`."""
    per_variant = {"bce (default run)": default_run}
    per_variant.update({p.name: read_records(p) for p in sorted(pathlib.Path(variants_dir).glob("*")) if p.is_dir()})
    return per_variant


def studies_markdown(summary: dict, reference: dict, per_variant: dict[str, list[dict]], *,
                     refine_table: str = "") -> str:
    """The README studies block: seeds, loss variants and (when given) the refine study's tables."""
    body = "### Seeds\n\n" + seed_table(summary) + "\n### Loss variants\n\n" + variant_table(reference, per_variant)
    if refine_table:
        body += "\n### Explicit discriminators and the generalization gap (notebook 07)\n\n" + refine_table
    return body
