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
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emdm_core.stats import holm, paired_counts  # noqa: E402
from emdm_eval.paired import OUTCOMES_NAME, point_key, read_outcomes  # noqa: E402


def _label(row: dict) -> str:
    return f"{row['sampler']}@{row['steps']}" + (f" {row['options']}" if row.get("options") else "")


def frontier_rows(folder: Path, baseline: str, metric: str, task: str | None,
                  tokens_per_doc: float | None) -> list[dict]:
    """One row per grid point: accuracy, passes, tokens per forward, and the paired comparison with `baseline`."""
    with (folder / "results.csv").open() as f:
        points = list(csv.DictReader(f))
    outcomes = read_outcomes(folder / OUTCOMES_NAME)
    base = [p for p in points if _label(p) == baseline]
    if not base:
        raise SystemExit(f"error: baseline {baseline!r} is not a point of {folder}; points: "
                         f"{', '.join(_label(p) for p in points)}")
    base_docs = outcomes[point_key(base[0])]
    task = task or next(iter(base_docs))
    rows = []
    for point in points:
        docs = outcomes.get(point_key(point), {}).get(task)
        if not docs:
            continue
        ids = sorted(set(docs) & set(base_docs[task]))
        a = [int(docs[i][metric]) for i in ids]
        b = [int(base_docs[task][i][metric]) for i in ids]
        counts = paired_counts(a, b)
        rate = sum(a) / len(a)
        half = 1.959963984540054 * math.sqrt(rate * (1 - rate) / len(a))
        diff, low, high = counts.difference()
        passes = float(point["passes_per_doc"])
        rows.append({"point": _label(point), "n": len(ids), "accuracy": rate, "acc_low": rate - half,
                     "acc_high": rate + half, "passes": passes,
                     "tokens_per_forward": (tokens_per_doc / passes) if tokens_per_doc else None,
                     "diff": diff, "diff_low": low, "diff_high": high,
                     "p": counts.p_value if _label(point) != baseline else None,
                     "baseline": _label(point) == baseline})
    compared = [r for r in rows if not r["baseline"]]
    for row, adjusted in zip(compared, holm([r["p"] for r in compared])):
        row["p_holm"] = adjusted
    return sorted(rows, key=lambda r: r["passes"])


def pareto(rows: list[dict]) -> list[dict]:
    """The points no other point beats on both accuracy (higher) and passes (fewer)."""
    return [r for r in rows if not any(o["accuracy"] >= r["accuracy"] and o["passes"] <= r["passes"] and
                                       (o["accuracy"], o["passes"]) != (r["accuracy"], r["passes"]) for o in rows)]


def _p(value: float | None) -> str:
    return "-" if value is None else (f"{value:.2g}" if value < 0.001 else f"{value:.3f}")


def markdown(rows: list[dict], baseline: str, metric: str, title: str) -> str:
    front = {r["point"] for r in pareto(rows)}
    lines = [f"## {title}", "", f"Baseline: `{baseline}`. Paired on the same items; McNemar p exact, Holm p adjusted "
             f"over the {sum(not r['baseline'] for r in rows)} comparisons with the baseline. Frontier: no other "
             f"point is both at least as accurate and at most as many passes.", "",
             f"| decoder | n | {metric} [95% CI] | passes / item | tokens / forward | vs baseline [95% CI] | McNemar p "
             f"| Holm p | frontier |", "|---|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    for r in rows:
        tpf = "-" if r["tokens_per_forward"] is None else f"{r['tokens_per_forward']:.1f}"
        versus = "baseline" if r["baseline"] else f"{r['diff']:+.3f} [{r['diff_low']:+.3f}, {r['diff_high']:+.3f}]"
        lines.append(f"| `{r['point']}` | {r['n']} | {r['accuracy']:.3f} [{r['acc_low']:.3f}, {r['acc_high']:.3f}] | "
                     f"{r['passes']:.1f} | {tpf} | {versus} | {_p(r['p'])} | {_p(r.get('p_holm'))} | "
                     f"{'yes' if r['point'] in front else ''} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, metric: str, title: str) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for r in rows:
        ax.errorbar(r["passes"], r["accuracy"], yerr=[[r["accuracy"] - r["acc_low"]], [r["acc_high"] - r["accuracy"]]],
                    fmt="o", color="black" if r["baseline"] else "tab:blue", capsize=2)
        ax.annotate(r["point"], (r["passes"], r["accuracy"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    front = sorted(pareto(rows), key=lambda r: r["passes"])
    ax.plot([r["passes"] for r in front], [r["accuracy"] for r in front], "--", color="tab:red", label="frontier")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("mean forward passes per item (log)")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    rows = frontier_rows(Path(args.ablation), args.baseline, args.metric, args.task, args.tokens_per_doc)
    out = Path(args.out)
    out.write_text(markdown(rows, args.baseline, args.metric, args.title))
    plot(rows, out.with_suffix(".png"), args.metric, args.title)
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
