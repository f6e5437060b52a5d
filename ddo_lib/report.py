"""The results report: tables and figures generated from `metrics/`, and the README results block."""
from __future__ import annotations

import json
import pathlib
from typing import Sequence

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402

from ddo_lib import evaluate, paths  # noqa: E402
from ddo_lib.plots import save_figure  # noqa: E402

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def load_records(folder) -> list[dict]:
    """Every flat metrics JSON in `folder`, ordered reference, DDO rounds, MLE rounds, real floor."""
    records = [json.loads(p.read_text()) for p in sorted(pathlib.Path(folder).glob("*.json"))]
    order = {"reference": 0, "ddo": 1, "mle": 2}
    return sorted(records, key=lambda r: (order.get(r["model"].split("_round")[0], 3), r["round"]))


def plot_metric_vs_round(records: Sequence[dict], path, *, metric: str = "value") -> pathlib.Path:
    """Metric against round for the DDO rounds and the MLE control, both starting at the reference."""
    figure, axis = plt.subplots(figsize=(5.5, 3.5))
    reference = next(r for r in records if r["model"] == "reference")
    for run, style in (("ddo", "o-"), ("mle", "s--")):
        rows = [reference] + [r for r in records if r["model"].startswith(f"{run}_round")]
        axis.plot([r["round"] for r in rows], [r[metric] for r in rows], style, label=run)
    floor = [r for r in records if r["model"] == "real_held_out_vs_train"]
    if floor:
        axis.axhline(floor[0][metric], color="grey", lw=1, ls=":", label="held-out real")
    axis.set_xlabel("round")
    axis.set_ylabel(f"{reference.get('metric', metric)} (lower is better)" if metric == "value" else metric)
    axis.grid(alpha=0.3)
    axis.legend()
    return save_figure(figure, path)


def results_markdown(records: Sequence[dict], *, prose: str = "") -> str:
    """The README results section body: the table plus an optional paragraph."""
    lines = [evaluate.records_table(records)]
    if prose:
        lines += ["", prose]
    return "\n".join(lines) + "\n"


def update_readme(readme_path, body: str) -> pathlib.Path:
    """Replace the text between the results markers of README.md (atomically)."""
    path = pathlib.Path(readme_path)
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{path}: results markers {BEGIN} / {END} not found")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    return paths.atomic_write_bytes(path, f"{head}{BEGIN}\n{body}{END}{tail}".encode())


def _best(records: Sequence[dict], run: str) -> dict | None:
    rows = [r for r in records if r["model"].startswith(f"{run}_round")]
    return min(rows, key=lambda r: r["value"]) if rows else None


def prose(records: Sequence[dict]) -> str:
    """A paragraph stating, from the numbers only, how DDO compares with the reference and the control."""
    reference = next(r for r in records if r["model"] == "reference")
    ddo, mle = _best(records, "ddo"), _best(records, "mle")
    if ddo is None:
        return "No DDO rounds were evaluated."
    if all(r["value"] == reference["value"] for r in records if r["model"].startswith("ddo_round")):
        return ("Model selection kept the reference in every DDO round (no evaluated step scored better "
                "than step 0): on this run DDO did not improve on the reference.")
    change = 100.0 * (ddo["value"] - reference["value"]) / reference["value"]
    text = (f"Best DDO model ({ddo['model']}): {ddo['metric']} {ddo['value']:.3f} vs reference "
            f"{reference['value']:.3f} ({change:+.1f} %), precision {ddo['precision']:.3f} vs "
            f"{reference['precision']:.3f}, recall {ddo['recall']:.3f} vs {reference['recall']:.3f}.")
    if mle is not None:
        verdict = "below" if ddo["value"] < mle["value"] else "not below"
        text += (f" The best equal-compute MLE control ({mle['model']}) scores {mle['value']:.3f}: "
                 f"DDO ends {verdict} it on this single-seed run.")
    rounds = [r for r in records if r["model"].startswith("ddo_round")]
    if len(rounds) > 1:
        gain = rounds[0]["value"] - min(r["value"] for r in rounds[1:])
        text += (f" Rounds after the first {'improve' if gain > 0 else 'do not improve'} on round 1 "
                 f"({rounds[0]['value']:.3f} → best later {min(r['value'] for r in rounds[1:]):.3f}).")
    return text
