"""Sampler ablations through lm-eval in one process: a grid of samplers x steps x options, the model loaded once.

    python -m emdm_eval.ablation --pretrained DIR --tasks sudoku_easy --samplers vanilla top_prob margin entropy \\
        --steps 10 27 50 --option threshold=0.9 --option threshold=0.7 --limit 200 --out results/ablation

Each grid point is one `lm_eval.simple_evaluate` call on the same `EMDMLM` (its sampler settings replaced by
`EMDMLM.configure_sampler`), with emdm's task folder on the search path. Written to `--out`:

* `results.csv`: one row per grid point: the settings, every metric of every task with its stderr, documents,
  forward passes (batched), forward passes per document, decoding seconds and documents/s (for Sudoku a
  document is a puzzle). Grid points already in the CSV (same checkpoint, tasks, limit, seed, model args,
  sampler, steps, options) are skipped, so an interrupted run resumes where it stopped;
* `results.md`: the same as a Markdown table;
* `outcomes.jsonl`: every document's metrics at every grid point (a later analysis needs no re-run);
* `paired.csv` and the "Paired comparisons" section of `results.md`: every two samplers at the same steps and
  options (`--all-pairs`: every two grid points) on the same documents, per task and 0/1 metric: both / only-A /
  only-B / neither, the difference of the rates with a 95% paired interval and the exact McNemar p-value;
* `accuracy_vs_steps.png`: the `--metric` (default: the first metric of the first task) against steps, one line
  per sampler (and per option set without a threshold); threshold (parallel decoding) rows are single markers
  at their measured forward passes per document.

The options axis is "no options" (unless `--no-baseline`) plus each `--option` (`k=v[,k=v...]`: any sampler field
or strategy option). A threshold replaces the step schedule (each step reveals every position above it), so
option sets with a `threshold` run once per sampler, with the largest `--steps` as the step budget.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from . import SPEED_METRICS

CSV_NAME, MD_NAME, PNG_NAME = "results.csv", "results.md", "accuracy_vs_steps.png"
KEY_COLUMNS = ["pretrained", "tasks", "limit", "seed", "model_args", "sampler", "steps", "options"]
COST_COLUMNS = ["docs", "forward_passes", "passes_per_doc", "seconds", "docs_per_s", "wall_seconds"]
STDERR = "_stderr"


@dataclass
class GridPoint:
    """One sampler setting of the grid."""

    sampler: str
    steps: int
    options: dict[str, str] = field(default_factory=dict)

    @property
    def options_text(self) -> str:
        """Canonical `k=v,k=v` text of the options (sorted; empty for none)."""
        return ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))

    @property
    def parallel(self) -> bool:
        """Whether this point decodes with a confidence threshold (parallel decoding)."""
        return str(self.options.get("threshold", "none")).lower() not in ("none", "null", "")

    def sampler_kwargs(self) -> dict[str, Any]:
        """The sampler arguments of this point, as `EMDMLM.configure_sampler` takes them."""
        return {"sampler": self.sampler, "steps": self.steps, **self.options}


def parse_kv(text: str, what: str = "--option") -> dict[str, str]:
    """Parse `k=v,k=v` into a dict; raise ConfigError on an item without `=`."""
    from emdm_core.typed import parse_mapping

    return parse_mapping(text, what)


def build_grid(samplers: Sequence[str], steps: Sequence[int], option_sets: Sequence[dict[str, str]],
               baseline: bool = True) -> list[GridPoint]:
    """The grid points in run order: sampler, then option set, then steps (threshold sets: the largest steps only)."""
    sets = ([{}] if baseline else []) + [dict(o) for o in option_sets]
    points: list[GridPoint] = []
    for sampler in samplers:
        for opts in sets:
            probe = GridPoint(sampler, 0, opts)
            for n in ([max(steps)] if probe.parallel else list(steps)):
                point = GridPoint(sampler, int(n), dict(opts))
                if all(p.sampler_kwargs() != point.sampler_kwargs() for p in points):
                    points.append(point)
    return points


def validate_grid(points: Sequence[GridPoint], sampler_defaults: dict[str, str]) -> None:
    """Raise emdm's one-line ConfigError for an unknown sampler or option, before anything is loaded."""
    from emdm_sampling import SamplerConfig

    for point in points:
        SamplerConfig.from_kwargs(**{**sampler_defaults, **point.sampler_kwargs(), "gen_length": 1})


def _number(value: Any) -> float | None:
    """A float, or None for a missing / non-numeric value."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def flatten_results(results: dict, tasks: Sequence[str]) -> dict[str, float | None]:
    """`{task/metric: value, task/metric_stderr: stderr}` from lm-eval's results, the given tasks first."""
    per_task = results.get("results", {})
    order = [t for t in tasks if t in per_task] + [t for t in per_task if t not in tasks]
    out: dict[str, float | None] = {}
    for task in order:
        for key, value in per_task[task].items():
            if "," not in key or key.split(",", 1)[0].endswith(STDERR):
                continue
            name, filt = key.split(",", 1)
            if _number(value) is None or name in SPEED_METRICS:  # costs: the grid's cost columns say them
                continue
            col = f"{task}/{name}" + ("" if filt == "none" else f",{filt}")
            out[col] = _number(value)
            out[col + STDERR] = _number(per_task[task].get(f"{name}{STDERR},{filt}"))
    return out


def cost_columns(results: dict, wall: float) -> dict[str, float]:
    """Documents, forward passes, passes per document, decoding seconds and documents/s of one evaluation."""
    stats = results.get("config", {}).get("emdm", {}).get("stats", {})
    docs = sum(int(n.get("effective", 0)) for n in results.get("n-samples", {}).values())
    passes = sum(int(s.get("forward_passes", 0)) for s in stats.values())
    row_passes = sum(int(s.get("row_forward_passes", s.get("forward_passes", 0))) for s in stats.values())
    seconds = sum(float(s.get("seconds", 0.0)) for s in stats.values())
    return {"docs": docs, "forward_passes": passes, "passes_per_doc": row_passes / docs if docs else None,
            "seconds": round(seconds, 3), "docs_per_s": docs / seconds if seconds > 0 else None,
            "wall_seconds": round(wall, 3)}


# --- the CSV cache ---------------------------------------------------------------------------------------------
def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of an existing results CSV (empty when there is none)."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def row_key(row: dict[str, Any]) -> tuple[str, ...]:
    """The cache key of a row: the settings that change its numbers."""
    return tuple("" if row.get(k) is None else str(row[k]) for k in KEY_COLUMNS)


def metric_names(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Metric columns (no stderr) in first-seen order over the rows."""
    skip = set(KEY_COLUMNS) | set(COST_COLUMNS)
    names: list[str] = []
    for row in rows:
        for col in row:
            if col not in skip and not col.endswith(STDERR) and col not in names:
                names.append(col)
    return names


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    """Write `rows` as a CSV with `columns` atomically (a reader never sees half a file); None is written empty."""
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})
    os.replace(tmp, path)


def write_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write the rows (union of their columns: settings, metrics with stderr, costs) atomically."""
    metrics = metric_names(rows)
    write_csv(path, KEY_COLUMNS + [c for m in metrics for c in (m, m + STDERR)] + COST_COLUMNS, rows)


# --- reports ---------------------------------------------------------------------------------------------------
def _fmt(value: Any, digits: int) -> str:
    """A number for the Markdown table with `digits` decimals ('-' when missing)."""
    num = _number(value)
    return "-" if num is None else f"{num:.{digits}f}"


def markdown_table(rows: Sequence[dict[str, Any]], metrics: Sequence[str] | None = None) -> str:
    """A Markdown table: sampler, steps, options, each metric ± stderr, forward passes, passes/doc, seconds, docs/s.

    With metrics of one task only, the headers drop the `task/` prefix.
    """
    metrics = list(metrics) if metrics is not None else metric_names(rows)
    one_task = len({m.split("/", 1)[0] for m in metrics}) <= 1
    heads = [m.split("/", 1)[1] if one_task and "/" in m else m for m in metrics]
    header = ["sampler", "steps", "options", *heads, "forward passes", "passes/doc", "seconds", "docs/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|"]
    for row in rows:
        cells = [str(row.get("sampler", "")), str(row.get("steps", "")), str(row.get("options") or "-")]
        for m in metrics:
            value, err = _number(row.get(m)), _number(row.get(m + STDERR))
            cells.append("-" if value is None else f"{value:.4f}" + ("" if err is None else f" ± {err:.4f}"))
        cells += [_fmt(row.get("forward_passes"), 0), _fmt(row.get("passes_per_doc"), 1), _fmt(row.get("seconds"), 1),
                  _fmt(row.get("docs_per_s"), 2)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", TIME_NOTE]
    return "\n".join(lines) + "\n"


# what the time columns are: the grid points run one after another, each on whatever else the machine was doing
TIME_NOTE = ("seconds, docs/s: the wall time of each point as it ran, one point after another, machine load included; "
             "compare forward passes, or time only between points run next to each other in one run.")


def plot(rows: Sequence[dict[str, Any]], metric: str, path: Path, title: str = "") -> None:
    """Plot `metric` against steps: a line per sampler (and option set); threshold rows as markers at passes/doc."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors: dict[str, Any] = {}
    series: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    parallel_seen: dict[str, int] = {}
    for row in rows:
        y, err = _number(row.get(metric)), _number(row.get(metric + STDERR))
        if y is None:
            continue
        sampler, opts = str(row["sampler"]), str(row.get("options") or "")
        if sampler not in colors:
            colors[sampler] = f"C{len(colors) % 10}"
        if "threshold=" in opts and not any(p == "threshold=none" for p in opts.split(",")):
            x = _number(row.get("passes_per_doc")) or _number(row.get("steps"))
            k = parallel_seen.get(opts, len(parallel_seen))
            parallel_seen.setdefault(opts, k)
            ax.errorbar([x], [y], yerr=[err or 0.0], fmt=markers[(k + 1) % len(markers)], color=colors[sampler],
                        markersize=8, capsize=3, linestyle="none", label=f"{sampler} {opts}")
        else:
            series.setdefault((sampler, opts), []).append((float(row["steps"]), y, err or 0.0))
    for (sampler, opts), pts in series.items():
        pts.sort()
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], color=colors[sampler],
                    marker="o", markersize=4, capsize=3, linestyle="-" if not opts else "--",
                    label=sampler + (f" {opts}" if opts else ""))
    ys = [_number(r.get(metric)) for r in rows if _number(r.get(metric)) is not None]
    if ys and 0.0 <= min(ys) and max(ys) <= 1.0:  # a rate: show the whole 0-1 range
        ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("steps (threshold rows: forward passes per document)")
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} vs steps")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def pick_metric(rows: Sequence[dict[str, Any]], wanted: str | None) -> str:
    """The metric column to plot: `wanted` (a column or a bare metric name), default the first metric."""
    from emdm_core.errors import ConfigError

    names = metric_names(rows)
    if not names:
        raise ConfigError("the evaluation returned no numeric metric to plot")
    if not wanted:
        return names[0]
    for name in names:
        if name == wanted or name.split("/", 1)[-1] == wanted:
            return name
    raise ConfigError(f"--metric {wanted!r} is not among the results' metrics: {', '.join(names)}")


def write_reports(out: Path, rows: list[dict[str, Any]], metric: str | None, title: str = "",
                  cached: Sequence[dict[str, Any]] = (), all_pairs: bool = False) -> str:
    """Write results.csv (rows, then other `cached` rows), paired.csv, results.md and accuracy_vs_steps.png
    (rows only). Returns the plotted metric column.
    """
    from .paired import OUTCOMES_NAME, PAIRED_NAME, paired_markdown, paired_rows, read_outcomes, write_paired_csv

    write_rows(out / CSV_NAME, [*rows, *cached])
    pairs = paired_rows(rows, read_outcomes(out / OUTCOMES_NAME), all_pairs)
    write_paired_csv(out / PAIRED_NAME, pairs)
    (out / MD_NAME).write_text(markdown_table(rows) + ("\n" + paired_markdown(pairs) if pairs else ""))
    column = pick_metric(rows, metric)
    try:
        plot(rows, column, out / PNG_NAME, title)
    except ImportError:
        print(f"warning: matplotlib is not installed (pip install 'emdm[plot]'); {PNG_NAME} not written",
              file=sys.stderr)
    return column


# --- running the grid ------------------------------------------------------------------------------------------
def _task_manager(include: Sequence[str]):
    """A TaskManager that also searches emdm's task folder and `include`."""
    from lm_eval.tasks import TaskManager

    from . import task_paths

    return TaskManager(include_path=task_paths(list(include)) or None)


def _check_tasks(tm, tasks: Sequence[str]) -> None:
    """Raise a one-line ConfigError for a task name lm-eval does not know."""
    from emdm_core.errors import ConfigError

    known = set(tm.all_tasks)
    bad = [t for t in tasks if t not in known]
    if bad:
        ours = sorted(t for t in known if t.startswith(("sudoku", "emdm_")))
        raise ConfigError(f"unknown task(s) {', '.join(bad)}; emdm's tasks: {', '.join(ours)} (other folders: "
                          f"--include-path)")


def run(args: argparse.Namespace) -> Path:
    """Run the grid (skipping cached points) and write the reports; return the output folder."""
    import torch
    from lm_eval import evaluator
    from tqdm import tqdm

    from .model import MODEL_ARGS, EMDMLM
    from .paired import OUTCOMES_NAME, append_outcomes, document_outcomes
    from .registration import register

    if args.threads:
        torch.set_num_threads(args.threads)
    model_args = parse_kv(args.model_args or "", "--model-args")
    ctor = {k: v for k, v in model_args.items() if k in MODEL_ARGS}
    sampler_defaults = {k: v for k, v in model_args.items() if k not in MODEL_ARGS}
    points = build_grid(args.samplers, args.steps, [parse_kv(o) for o in args.option or []], not args.no_baseline)
    validate_grid(points, sampler_defaults)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = read_rows(out / CSV_NAME)
    base = {"pretrained": args.pretrained, "tasks": ",".join(args.tasks),
            "limit": "" if args.limit is None else args.limit, "seed": args.seed,
            "model_args": ",".join(f"{k}={v}" for k, v in sorted(model_args.items()))}
    done = {row_key(r) for r in rows}
    todo = [p for p in points if row_key({**base, "sampler": p.sampler, "steps": p.steps,
                                          "options": p.options_text}) not in done]
    if todo:
        register()
        # the model first: a missing checkpoint fails with emdm's one-line error before lm-eval indexes its tasks
        lm = EMDMLM(**{"batch_size": args.batch_size, "device": args.device, "seed": args.seed, **ctor,
                       "pretrained": args.pretrained, **sampler_defaults, **todo[0].sampler_kwargs()})
        tm = _task_manager(args.include_path or [])
        _check_tasks(tm, args.tasks)
        bar = tqdm(todo, desc="ablation grid", unit="point")
        for point in bar:
            bar.set_postfix_str(f"{point.sampler} steps={point.steps} {point.options_text}".strip())
            lm.configure_sampler(**{**sampler_defaults, **point.sampler_kwargs()})
            start = time.perf_counter()
            results = evaluator.simple_evaluate(
                model=lm, tasks=list(args.tasks), limit=args.limit, task_manager=tm, log_samples=True,
                bootstrap_iters=args.bootstrap_iters, random_seed=0, numpy_random_seed=args.seed,
                torch_random_seed=args.seed, fewshot_random_seed=args.seed, verbosity="WARNING")
            row = {**base, "sampler": point.sampler, "steps": point.steps, "options": point.options_text,
                   **flatten_results(results, args.tasks), **cost_columns(results, time.perf_counter() - start)}
            append_outcomes(out / OUTCOMES_NAME, row, document_outcomes(results))
            rows.append(row)
            write_rows(out / CSV_NAME, rows)  # after every point: an interrupted run resumes from here
        bar.close()
    mine, others = _split_by_grid(rows, points, base)
    column = write_reports(out, mine, args.metric, f"{Path(args.pretrained).name}: {','.join(args.tasks)}", others,
                           args.all_pairs)
    print((out / MD_NAME).read_text(), end="")
    print(f"wrote {out / CSV_NAME}, {out / MD_NAME}, paired.csv, outcomes.jsonl, {out / PNG_NAME} (plotted "
          f"{column}; {len(todo)} new, {len(points) - len(todo)} cached grid points)")
    return out


def _split_by_grid(rows: list[dict[str, Any]], points: Sequence[GridPoint],
                   base: dict) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(this grid's rows in grid order, the CSV's other rows as they were: other checkpoints, limits, ...)."""
    keys = [row_key({**base, "sampler": p.sampler, "steps": p.steps, "options": p.options_text}) for p in points]
    by_key = {row_key(r): r for r in rows}
    wanted = set(keys)
    return [by_key[k] for k in keys if k in by_key], [r for r in rows if row_key(r) not in wanted]


def _limit(text: str) -> int | float:
    """--limit: an int (documents per task) or a float below 1 (a fraction)."""
    value = float(text)
    return value if value < 1 else int(value)


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    ap = argparse.ArgumentParser(prog="python -m emdm_eval.ablation", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrained", required=True, help="checkpoint directory (or Hub id / emdm:NAME)")
    ap.add_argument("--tasks", nargs="+", required=True, help="lm-eval task names (emdm's tasks are known)")
    ap.add_argument("--samplers", nargs="+", default=["vanilla", "top_prob", "margin", "entropy"],
                    help="registered samplers, the grid's first axis (default: %(default)s)")
    ap.add_argument("--steps", nargs="+", type=int, default=[10, 27, 50],
                    help="forward-pass budgets, the grid's second axis (default: %(default)s)")
    ap.add_argument("--option", action="append", metavar="K=V[,K=V]",
                    help="an extra option set on the grid's options axis (repeat for more), e.g. threshold=0.9")
    ap.add_argument("--no-baseline", action="store_true", help="leave the 'no options' set out of the grid")
    ap.add_argument("--all-pairs", action="store_true",
                    help="paired comparisons of every two grid points (default: samplers at the same steps/options)")
    ap.add_argument("--model-args", default="", help="k=v,... for every grid point (model or sampler arguments)")
    ap.add_argument("--limit", type=_limit, default=None, help="documents per task (or a fraction < 1)")
    ap.add_argument("--metric", default=None, help="metric to plot (default: the first metric of the first task)")
    ap.add_argument("--out", required=True, help="output folder (results.csv is also the resume cache)")
    ap.add_argument("--batch-size", default="32", help="generation batch size (or auto)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    ap.add_argument("--seed", type=int, default=1234, help="base seed (lm-eval's default)")
    ap.add_argument("--bootstrap-iters", type=int, default=1000, help="lm-eval bootstrap iterations for stderrs")
    ap.add_argument("--include-path", nargs="*", default=[], help="more lm-eval task folders")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--verbose", action="store_true", help="keep lm-eval's log messages")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: run the grid; emdm's errors print as one line (exit status 2), Ctrl-C says how to resume."""
    from emdm_core.cli import run_cli

    def _run(argv: Sequence[str] | None) -> int:
        args = build_parser().parse_args(argv)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        if not args.verbose:  # lm-eval repeats its task warnings at every grid point
            logging.getLogger("lm_eval").setLevel(logging.ERROR)
        run(args)
        return 0

    return run_cli(_run, argv, interrupted="interrupted; run the same command again to resume (results.csv keeps "
                                           "the grid points already done)")


if __name__ == "__main__":
    sys.exit(main())
