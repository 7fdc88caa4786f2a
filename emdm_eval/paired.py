"""Per-document outcomes of an ablation grid and the paired comparison of its samplers on the same documents.

`outcomes.jsonl` holds one line per (grid point, task, document): the point's settings, `task`, `doc_id` and
each metric's value for that document, so a later analysis needs no re-run. `paired_rows` compares every two
grid points that decode with the same steps and options but different samplers (or every two points, with
`all_pairs`), per task and per 0/1 metric (Sudoku's `solved`), on the documents both scored: both / only-A /
only-B / neither counts, the difference of the rates with a 95% paired interval, and the exact McNemar p-value.
"""

from __future__ import annotations

import json
import os
from itertools import combinations
from pathlib import Path
from typing import Any, Iterable, Sequence

from emdm_core.stats import format_p, holm, paired_counts

OUTCOMES_NAME, PAIRED_NAME = "outcomes.jsonl", "paired.csv"
POINT_COLUMNS = ("pretrained", "tasks", "limit", "seed", "model_args", "sampler", "steps", "options")
PAIRED_COLUMNS = ["task", "metric", "a_sampler", "a_steps", "a_options", "b_sampler", "b_steps", "b_options", "n",
                  "both", "only_a", "only_b", "neither", "rate_a", "rate_b", "diff", "ci_low", "ci_high", "p_value",
                  "p_holm"]


def point_key(row: dict[str, Any]) -> tuple[str, ...]:
    """The settings that identify a grid point (as text)."""
    return tuple("" if row.get(k) is None else str(row[k]) for k in POINT_COLUMNS)


def document_outcomes(results: dict) -> list[dict[str, Any]]:
    """[{task, doc_id, metric: value}] from lm-eval results run with `log_samples=True` (numeric metrics only)."""
    out = []
    for task, samples in (results.get("samples") or {}).items():
        for sample in samples:
            metrics = {m: sample[m] for m in sample.get("metrics", []) if isinstance(sample.get(m), (int, float))}
            out.append({"task": task, "doc_id": int(sample["doc_id"]), **metrics})
    return out


def append_outcomes(path: Path, point: dict[str, Any], outcomes: Iterable[dict[str, Any]]) -> None:
    """Append one grid point's per-document outcomes (flushed: an interrupted run keeps what it wrote)."""
    settings = {k: point.get(k) for k in POINT_COLUMNS}
    with path.open("a") as f:
        for row in outcomes:
            f.write(json.dumps({**settings, **row}) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_outcomes(path: Path) -> dict[tuple[str, ...], dict[str, dict[int, dict[str, float]]]]:
    """{point key: {task: {doc_id: {metric: value}}}}; a point written twice (a resumed run) keeps its last."""
    table: dict[tuple[str, ...], dict[str, dict[int, dict[str, float]]]] = {}
    if not path.is_file():
        return table
    with path.open() as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            metrics = {k: v for k, v in row.items() if k not in POINT_COLUMNS and k not in ("task", "doc_id")}
            table.setdefault(point_key(row), {}).setdefault(row["task"], {})[int(row["doc_id"])] = metrics
    return table


def _binary_metrics(docs_a: dict[int, dict[str, float]], docs_b: dict[int, dict[str, float]],
                    ids: Sequence[int]) -> list[str]:
    names = [m for m in docs_a[ids[0]] if all(m in docs_b[i] and m in docs_a[i] for i in ids)]
    return [m for m in names if all(docs_a[i][m] in (0, 1) and docs_b[i][m] in (0, 1) for i in ids)]


def paired_rows(points: Sequence[dict[str, Any]], outcomes: dict, all_pairs: bool = False) -> list[dict[str, Any]]:
    """The paired comparisons of the grid points (rows with POINT_COLUMNS), in grid order."""
    rows: list[dict[str, Any]] = []
    for a, b in combinations(points, 2):
        same_setting = (str(a["steps"]), str(a.get("options") or "")) == (str(b["steps"]), str(b.get("options") or ""))
        if not all_pairs and (not same_setting or a["sampler"] == b["sampler"]):
            continue
        out_a, out_b = outcomes.get(point_key(a), {}), outcomes.get(point_key(b), {})
        for task in [t for t in out_a if t in out_b]:
            ids = sorted(set(out_a[task]) & set(out_b[task]))
            if not ids:
                continue
            for metric in _binary_metrics(out_a[task], out_b[task], ids):
                counts = paired_counts([int(out_a[task][i][metric]) for i in ids],
                                       [int(out_b[task][i][metric]) for i in ids])
                diff, low, high = counts.difference()
                rows.append({"task": task, "metric": metric,
                             "a_sampler": a["sampler"], "a_steps": a["steps"], "a_options": a.get("options") or "",
                             "b_sampler": b["sampler"], "b_steps": b["steps"], "b_options": b.get("options") or "",
                             "n": counts.n, "both": counts.both, "only_a": counts.only_a, "only_b": counts.only_b,
                             "neither": counts.neither, "rate_a": (counts.both + counts.only_a) / counts.n,
                             "rate_b": (counts.both + counts.only_b) / counts.n, "diff": diff, "ci_low": low,
                             "ci_high": high, "p_value": counts.p_value})
    for row, adjusted in zip(rows, holm([r["p_value"] for r in rows])):  # the family: every comparison shown
        row["p_holm"] = adjusted
    return rows


def write_paired_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """paired.csv: one row per comparison (PAIRED_COLUMNS), written atomically."""
    from .ablation import write_csv

    write_csv(path, PAIRED_COLUMNS, rows)


def _label(row: dict[str, Any], side: str, with_setting: bool) -> str:
    text = str(row[f"{side}_sampler"])
    if with_setting:
        text += f" @{row[f'{side}_steps']}" + (f" {row[f'{side}_options']}" if row[f"{side}_options"] else "")
    return text


def paired_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The paired comparisons as a Markdown section ('' when there are none)."""
    if not rows:
        return ""
    lines = ["## Paired comparisons (same documents)", "",
             "McNemar p is exact; Holm p adjusts it for the whole family of comparisons in this table.", "",
             "| task | metric | steps | options | A | B | n | both | only A | only B | neither | A - B [95% CI] | "
             "McNemar p | Holm p |", "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        same = (str(r["a_steps"]), r["a_options"]) == (str(r["b_steps"]), r["b_options"])
        lines.append(
            f"| {r['task']} | {r['metric']} | {r['a_steps'] if same else '-'} | "
            f"{(r['a_options'] or '-') if same else '-'} | {_label(r, 'a', not same)} | {_label(r, 'b', not same)} | {r['n']} | {r['both']} | {r['only_a']} | "
            f"{r['only_b']} | {r['neither']} | {r['diff']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] | "
            f"{format_p(r['p_value'])} | {format_p(r['p_holm'])} |")
    return "\n".join(lines) + "\n"
