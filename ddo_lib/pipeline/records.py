"""Evaluation records: the flat metric JSONs of `metrics/`, read back, ordered and tabulated, and the
generated blocks of README.md. Report and studies build on these; nothing here draws or trains."""
from __future__ import annotations

import json
import pathlib
from typing import Iterable, Sequence

from ddo_lib.checkpoint import atomic_write_bytes

FAMILY_ORDER = {"edm": 0, "var": 1}
RUN_ORDER = {"reference": 0, "ddo": 1, "mle": 2, "plateau": 3}
TABLE_COLUMNS = ("family", "model", "round", "compute_fraction", "metric", "value", "precision", "recall",
                 "num_images")


def family_of(record: dict) -> str:
    """The model family of a record ('edm' for records written before families existed)."""
    return record.get("family", "edm")


def read_records(folder) -> list[dict]:
    """Every metrics JSON directly inside `folder`, in file-name order."""
    return [json.loads(p.read_text()) for p in sorted(pathlib.Path(folder).glob("*.json"))]


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


def final_of_run(records: Iterable[dict], run: str) -> dict | None:
    """The last round's record among `run`_round* records (None if there is none).

    Each round starts from the previous round's best EMA by the *selection* seeds, so the last round's
    model is the run's selected model; the evaluation seeds never choose among rounds."""
    rows = [r for r in records if r["model"].startswith(f"{run}_round")]
    return max(rows, key=lambda r: r["round"]) if rows else None


def records_table(records: Sequence[dict]) -> str:
    """A Markdown table of the main fields of metric records (None entries skipped)."""
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for record in filter(None, records):
        cells = [f"{record.get(c):.4g}" if isinstance(record.get(c), float) else str(record.get(c, ""))
                 for c in TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def update_block(path, body: str, *, begin: str, end: str) -> pathlib.Path:
    """Replace the text between the `begin` / `end` markers of a Markdown file (atomically)."""
    path = pathlib.Path(path)
    text = path.read_text()
    if begin not in text or end not in text:
        raise ValueError(f"{path}: markers {begin} / {end} not found")
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    return atomic_write_bytes(path, f"{head}{begin}\n{body}{end}{tail}".encode())
