"""The results report: tables and figures generated from `metrics/`, and the README results block."""
from __future__ import annotations

import json
import pathlib
from typing import Sequence

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import nbconvert  # noqa: E402
import nbformat  # noqa: E402

from ddo_lib.checkpoint import atomic_write_bytes  # noqa: E402
from ddo_lib.pipeline.plots import save_figure  # noqa: E402
from ddo_lib.pipeline.records import (  # noqa: E402
    family_of,
    final_of_run,
    records_table,
    update_block,
)

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def families(records: Sequence[dict]) -> list[str]:
    """Families that have a reference record, in table order."""
    return [family_of(r) for r in records if r["model"] == "reference"]


def plot_metric_vs_round(records: Sequence[dict], path, *, metric: str = "value") -> pathlib.Path:
    """Metric against round for the DDO rounds and the MLE control of every family (one panel each),
    both starting at the family's reference."""
    names = families(records)
    figure, axes = plt.subplots(1, len(names), figsize=(5.0 * len(names), 3.5), squeeze=False)
    floor = [r for r in records if r["model"] == "real_held_out_vs_train"]
    for axis, name in zip(axes[0], names):
        rows_of_family = [r for r in records if family_of(r) == name]
        reference = next(r for r in rows_of_family if r["model"] == "reference")
        for run, style in (("ddo", "o-"), ("mle", "s--")):
            rows = [reference] + [r for r in rows_of_family if r["model"].startswith(f"{run}_round")]
            axis.plot([r["round"] for r in rows], [r[metric] for r in rows], style, label=run)
        if floor:
            axis.axhline(floor[0][metric], color="grey", lw=1, ls=":", label=floor_label(floor[0], reference))
        axis.set_title(name)
        axis.set_xlabel("round")
        axis.set_ylabel(f"{reference.get('metric', metric)} (lower is better)" if metric == "value" else metric)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="best")
    return save_figure(figure, path)


def floor_label(floor: dict, reference: dict) -> str:
    """Legend of the real-data floor: FD is biased upward at small N, so the line says its image counts
    and, when they differ from the models', that it is not comparable at equal N."""
    n_floor, n_model = floor.get("num_images"), reference.get("num_images")
    text = f"held-out real, N = {n_floor}"
    return text if n_floor == n_model else text + f"\n(models: N = {n_model}; FD grows as N falls)"


def stage_durations(notebooks: Sequence) -> list[tuple[str, float]]:
    """(stage, seconds) from the papermill metadata of executed notebooks (`data/runs/notebooks/*.ipynb`)."""
    rows = []
    for path in notebooks:
        path = pathlib.Path(path)
        meta = json.loads(path.read_text()).get("metadata", {}).get("papermill", {})
        if meta.get("duration") is None:
            raise ValueError(f"{path}: no papermill duration (not an executed notebook?)")
        rows.append((path.stem, float(meta["duration"])))
    return rows


def durations_markdown(rows: Sequence[tuple[str, float]]) -> str:
    """A one-line-per-stage wall-clock table with the total."""
    lines = ["| stage (executed notebook) | wall-clock |", "|---|---|"]
    lines += [f"| {name} | {seconds / 60:.1f} min |" for name, seconds in rows]
    lines.append(f"| **total** | **{sum(s for _, s in rows) / 60:.1f} min** |")
    return "\n".join(lines) + "\n"


def results_markdown(records: Sequence[dict], *, prose: str = "") -> str:
    """The README results section body: the table plus an optional paragraph."""
    lines = [records_table(records)]
    if prose:
        lines += ["", prose]
    return "\n".join(lines) + "\n"


def headline(records: Sequence[dict]) -> list[dict]:
    """Per family: the reference, the final DDO round, the final MLE-control round and the plateau run;
    then the real-data floor (records in `load_records` order)."""
    rows = []
    for name in families(records):
        rows_of_family = [r for r in records if family_of(r) == name]
        rows.append(next(r for r in rows_of_family if r["model"] == "reference"))
        rows += [r for r in (final_of_run(rows_of_family, run) for run in ("ddo", "mle", "plateau")) if r]
    return rows + [r for r in records if r["model"] == "real_held_out_vs_train"][:1]


def readme_block(records: Sequence[dict]) -> str:
    """The README results block: the headline rows and the generated prose (every round: `metrics/results.md`)."""
    return (results_markdown(headline(records), prose=prose(records))
            + "\nEvery round of every run: `metrics/results.md`; plot: `plots/05_metric_vs_round.png`.\n")


def report_markdown(records: Sequence[dict], *, toy_findings: str = "") -> str:
    """The README results block: table and generated prose of every family, then the 2-D toy's verdicts
    (`toy_findings`: their Markdown, "" for none)."""
    body = results_markdown(records, prose=prose(records))
    if toy_findings:
        body += ("\n### 2-D toy (notebook 00; full table in `metrics/toy2d.md`)\n\nObjectives after the last "
                 "round against the MLE control, per (target, model) and (α, β):\n\n" + toy_findings)
    return body


def durations_page(notebooks: Sequence) -> str:
    """`metrics/stage_durations.md`: the wall-clock of each stage's last execution (papermill metadata)."""
    return ("# Stage wall-clock\n\nEach stage's last execution on the machine that ran `dvc repro`. A stage that "
            "resumed from its saved state (`persist` outputs) shows only the resumed part.\n\n"
            + durations_markdown(stage_durations(notebooks)))


PAGE_STYLE = ("body{font-family:sans-serif;max-width:64em;margin:2em auto;line-height:1.4}"
              "pre{background:#f6f8fa;padding:.5em;overflow:auto}.prompt{display:none}img{max-width:100%}"
              "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}")


def render_html(notebooks: Sequence, out_dir) -> list[pathlib.Path]:
    """Every executed notebook as a self-contained HTML page `<out_dir>/<name>.html`: nbconvert's `basic`
    body (figures inline) in a small page of its own, about a seventh of the size of the full template."""
    exporter = nbconvert.HTMLExporter(template_name="basic")
    written = []
    for path in map(pathlib.Path, notebooks):
        body, _ = exporter.from_notebook_node(nbformat.reads(path.read_text(), as_version=4))
        page = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{path.stem}</title>"
                f"<style>{PAGE_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")
        written.append(atomic_write_bytes(pathlib.Path(out_dir) / f"{path.stem}.html", page.encode()))
    return written


def update_readme(readme_path, body: str) -> pathlib.Path:
    """Replace the results block of README.md (between BEGIN and END)."""
    return update_block(readme_path, body, begin=BEGIN, end=END)


def family_prose(records: Sequence[dict]) -> str:
    """A paragraph stating, from the numbers only, how DDO compares with the reference and the control
    (records of one family)."""
    reference = next(r for r in records if r["model"] == "reference")
    ddo, mle, plateau = (final_of_run(records, run) for run in ("ddo", "mle", "plateau"))
    if ddo is None:
        return "No DDO rounds were evaluated."
    if all(r["value"] == reference["value"] for r in records if r["model"].startswith("ddo_round")):
        return ("Model selection kept the reference in every DDO round (no evaluated step scored better "
                "than step 0): on this run DDO did not improve on the reference.")
    change = 100.0 * (ddo["value"] - reference["value"]) / reference["value"]
    text = (f"Final DDO model ({ddo['model']}): {ddo['metric']} {ddo['value']:.3f} vs reference "
            f"{reference['value']:.3f} ({change:+.1f} %), precision {ddo['precision']:.3f} vs "
            f"{reference['precision']:.3f}, recall {ddo['recall']:.3f} vs {reference['recall']:.3f}.")
    if mle is not None:
        verdict = "below" if ddo["value"] < mle["value"] else "not below"
        text += (f" The equal-compute MLE control ({mle['model']}) scores {mle['value']:.3f}: "
                 f"DDO ends {verdict} it on this single-seed run.")
    text += plateau_sentence(reference, plateau or mle, longer=plateau is not None)
    rounds = sorted((r for r in records if r["model"].startswith("ddo_round")), key=lambda r: r["round"])
    if len(rounds) > 1:
        gain = rounds[0]["value"] - rounds[-1]["value"]
        chain = " → ".join(f"{r['value']:.3f}" for r in rounds)
        text += (f" Rounds after the first {'improve' if gain > 0 else 'do not improve'} on round 1 "
                 f"({chain}).")
    return text


def plateau_sentence(reference: dict, mle: dict | None, *, longer: bool = False) -> str:
    """Is the reference on an MLE plateau? The change of continued MLE training in units of the evaluation
    spread: the `plateau` run (MLE for twice DDO's compute) when `longer`, else the equal-compute control.
    Within one sd: on a plateau; lower by more: not on one; higher by more: MLE only makes it worse."""
    sd = reference.get("spread_sd")
    if mle is None or not sd:
        return ""
    change = mle["value"] - reference["value"]
    if abs(change) < sd:
        verdict = "the reference is on an MLE plateau at this compute"
    elif change < 0:
        verdict = "the reference is not on an MLE plateau at this compute (more MLE training still improves it)"
    else:
        verdict = ("more MLE training makes the reference worse: MLE cannot improve it at this compute "
                   "(past its plateau rather than on it)")
    what = (f"continuing MLE training for twice DDO's compute ({mle['model']}, "
            f"{100 * mle['compute_fraction']:.0f} % of the pretraining steps)" if longer
            else "continued MLE training (the equal-compute control)")
    return (f" Evaluation spread of the reference (sd over {len(reference['spread_values'])} disjoint seed "
            f"sets): {sd:.3f}; {what} changes the metric by {change:+.3f} "
            f"({abs(change) / sd:.1f} sd), so {verdict}.")


def prose(records: Sequence[dict]) -> str:
    """`family_prose` for every family, each paragraph headed by the family's name when there are several."""
    names = families(records)
    if len(names) == 1:
        return family_prose([r for r in records if family_of(r) == names[0]])
    return "\n\n".join(f"**{name.upper()}.** " + family_prose([r for r in records if family_of(r) == name])
                       for name in names)
