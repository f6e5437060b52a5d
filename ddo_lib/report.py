"""The results report: tables and figures generated from `metrics/`, and the README results block."""
from __future__ import annotations

import json
import pathlib
from typing import Sequence

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402

from ddo_lib import evaluate, paths  # noqa: E402
from ddo_lib.studies import final_of_run  # noqa: E402
from ddo_lib.plots import save_figure  # noqa: E402

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


FAMILY_ORDER = {"edm": 0, "var": 1}
RUN_ORDER = {"reference": 0, "ddo": 1, "mle": 2, "plateau": 3}


def family_of(record: dict) -> str:
    """The model family of a record ('edm' for records written before families existed)."""
    return record.get("family", "edm")


def load_records(folder) -> list[dict]:
    """Every flat metrics JSON under `folder` (recursively), ordered by family, then reference, DDO
    rounds, MLE rounds, then anything else (e.g. the real-data floor)."""
    records, seen = [], set()
    for path in sorted(pathlib.Path(folder).rglob("*.json")):
        record = json.loads(path.read_text())
        identity = (family_of(record), record["model"])
        if identity not in seen:  # the real-data floor is written by every family's evaluation
            seen.add(identity)
            records.append(record)

    def key(r: dict) -> tuple:
        return (FAMILY_ORDER.get(family_of(r), 9), RUN_ORDER.get(r["model"].split("_round")[0], 3), r["round"])

    return sorted(records, key=key)


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
            axis.axhline(floor[0][metric], color="grey", lw=1, ls=":", label="held-out real")
        axis.set_title(name)
        axis.set_xlabel("round")
        axis.set_ylabel(f"{reference.get('metric', metric)} (lower is better)" if metric == "value" else metric)
        axis.grid(alpha=0.3)
        axis.legend()
    return save_figure(figure, path)


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
    lines = [evaluate.records_table(records)]
    if prose:
        lines += ["", prose]
    return "\n".join(lines) + "\n"


def update_readme(readme_path, body: str, *, begin: str = BEGIN, end: str = END) -> pathlib.Path:
    """Replace the text between the `begin` / `end` markers of README.md (atomically)."""
    path = pathlib.Path(readme_path)
    text = path.read_text()
    if begin not in text or end not in text:
        raise ValueError(f"{path}: results markers {begin} / {end} not found")
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    return paths.atomic_write_bytes(path, f"{head}{begin}\n{body}{end}{tail}".encode())


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
