"""Accuracy against forward passes for every decoder of an ablation grid, each paired with a baseline.

    python -m emdm_eval.ablation --pretrained emdm:sudoku --tasks sudoku_easy --samplers margin credit ... \
        --steps 81 --option threshold=0.9 --limit 500 --out runs/decoders      # one or several grids, same --out
    python benchmarks/decoder_frontier.py --ablation runs/decoders --baseline margin@81 --metric solved \
        --tokens-per-doc 81 --out docs/benchmarks/decoders_sudoku.md

Reads the grid's `results.csv` and per-document `outcomes.jsonl` (every grid run into the same folder adds its
points) and writes a Markdown table: per point the accuracy with its 95% interval, mean forward passes per item,
tokens per forward, and against the baseline on the same items the paired difference with its 95% interval, the
exact McNemar p-value and the Holm-adjusted p-value over the whole family of comparisons; and a PNG of accuracy
against mean passes (log scale) with the Pareto frontier. Wall time is not compared: grid points may come from
separate runs (a ratio of seconds across runs measures machine load as much as the decoder).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emdm_eval.frontier import frontier_rows, markdown, plot  # noqa: E402
from emdm_eval.paired import OUTCOMES_NAME, point_key, read_outcomes  # noqa: E402


def _label(row: dict) -> str:
    return f"{row['sampler']}@{row['steps']}" + (f" {row['options']}" if row.get("options") else "")


def ablation_rows(folder: Path, baseline: str, metric: str, task: str | None,
                  tokens_per_doc: float | None) -> list[dict]:
    """One row per grid point of an ablation folder, paired with `baseline` (`emdm_eval.frontier.frontier_rows`)."""
    with (folder / "results.csv").open() as f:
        points = list(csv.DictReader(f))
    table = read_outcomes(folder / OUTCOMES_NAME)
    base = [p for p in points if _label(p) == baseline]
    if not base:
        raise SystemExit(f"error: baseline {baseline!r} is not a point of {folder}; points: "
                         f"{', '.join(_label(p) for p in points)}")
    task = task or next(iter(table[point_key(base[0])]))
    outcomes, costs = {}, {}
    for point in points:
        docs = table.get(point_key(point), {}).get(task)
        if not docs:
            continue
        passes = float(point["passes_per_doc"])
        outcomes[_label(point)] = {i: d[metric] for i, d in docs.items()}
        costs[_label(point)] = {"passes": passes, "tokens_per_forward": tokens_per_doc / passes if tokens_per_doc
                                else None}
    return frontier_rows(outcomes, costs, baseline)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ablation", required=True, help="an emdm_eval.ablation output folder")
    ap.add_argument("--baseline", required=True, help="the baseline point, sampler@steps[ options], e.g. margin@81")
    ap.add_argument("--metric", required=True, help="a 0/1 per-item metric, e.g. solved or exact_match")
    ap.add_argument("--task", help="the task (default: the first)")
    ap.add_argument("--tokens-per-doc", type=float, help="tokens each item generates (for tokens per forward)")
    ap.add_argument("--title", default="accuracy vs forward passes")
    ap.add_argument("--out", required=True, help="the Markdown file to write (the PNG goes beside it)")
    args = ap.parse_args()
    rows = ablation_rows(Path(args.ablation), args.baseline, args.metric, args.task, args.tokens_per_doc)
    out = Path(args.out)
    out.write_text(markdown(rows, args.baseline, args.metric, args.title))
    plot(rows, out.with_suffix(".png"), args.metric, args.title)
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
