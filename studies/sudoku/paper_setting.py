"""Kim et al. 2025's Sudoku experiment in the paper's own setting: gate, decoder grid, report (issue 14).

    python -m studies.sudoku.paper_setting evaluate --model runs/sudoku-paper-cpu --out studies/sudoku/results/paper-cpu
    python -m studies.sudoku.paper_setting report --results studies/sudoku/results/paper-cpu \\
        --out docs/sudoku/paper-setting.md

`evaluate` first runs the gate: `margin` at 50 steps on the first 200 easy puzzles. Below 10% solved the model
did not learn at this budget: the grid is not run (it would compare noise), the gate's numbers and the training
log are kept. Otherwise the grid: all 1,000 easy and 500 hard puzzles x {vanilla, top_prob, margin} x {no noise,
the paper's Gumbel noise on the ordering score (c = 0.5, decayed linearly as Ye et al.'s stochastic0.5-linear),
the same noise in Ye et al.'s re-masking top-k decoder} at 50 steps, through `emdm_eval.ablation` (results.csv/md,
outcomes.jsonl, paired.csv). `report` writes the Markdown report from those files only, so every number in it
comes from a committed file.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Sequence

from emdm_eval import ablation

SAMPLERS = ("vanilla", "top_prob", "margin")
STEPS = 50
GATE_PUZZLES, GATE_SOLVED = 200, 0.10
# the decoders of the comparison: the grid's option sets (the empty set is the no-noise baseline)
# (Ye et al.'s `stochastic0.5-linear`: Gumbel noise 0.5 * (S-1-j)/S on the score; the re-masking decoder adds only
# the re-masking, so the two noisy rows differ in that alone)
DECODERS = {"": "no noise",
            "order_noise=0.5,order_noise_decay=linear": "paper noise (Gumbel, c = 0.5, linear decay)",
            "order_noise=0.5,order_noise_decay=linear,topk_remask=linear": "paper noise + re-masking top-k (Ye et "
                                                                             "al.)"}


def _ablation(model: str, out: Path, tasks: Sequence[str], samplers: Sequence[str], options: Sequence[str],
              limit: int | None, batch_size: str, device: str, threads: int | None) -> None:
    argv = ["--pretrained", model, "--tasks", *tasks, "--samplers", *samplers, "--steps", str(STEPS),
            "--out", str(out), "--batch-size", batch_size, "--device", device, "--bootstrap-iters", "0"]
    argv += [a for opt in options if opt for a in ("--option", opt)]
    if limit is not None:
        argv += ["--limit", str(limit)]
    if threads:
        argv += ["--threads", str(threads)]
    if ablation.main(argv) != 0:
        raise SystemExit(f"the ablation run into {out} failed (see above)")


def gate_rates(out: Path) -> tuple[float, float]:
    """The gate's solved rate and blank-cell accuracy, from its results.csv."""
    row = ablation.read_rows(out / "results.csv")[0]
    return float(row["sudoku_easy/solved"]), float(row["sudoku_easy/cell_acc"])


def evaluate(args: argparse.Namespace) -> int:
    """Gate, then (if it passes) the decoder grid; the training log is copied next to the results."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = Path(args.model) / "train_log.jsonl"
    if log.is_file():
        shutil.copy(log, out / "train_log.jsonl")
    gate = out / "gate"
    _ablation(args.model, gate, ["sudoku_easy"], ["margin"], [""], GATE_PUZZLES, args.batch_size, args.device,
              args.threads)
    rate, cell_acc = gate_rates(gate)
    verdict = {"gate_solved": rate, "gate_cell_acc": cell_acc, "gate_puzzles": GATE_PUZZLES,
               "threshold": GATE_SOLVED, "passed": rate >= GATE_SOLVED}
    (out / "gate.json").write_text(json.dumps(verdict, indent=1) + "\n")
    if rate < GATE_SOLVED:
        print(f"gate: margin solved {rate:.1%} of {GATE_PUZZLES} easy puzzles (< {GATE_SOLVED:.0%}): the model did "
              f"not learn at this budget; the grid is not run")
        return 0
    _ablation(args.model, out / "grid", ["sudoku_easy", "sudoku_hard"], SAMPLERS, list(DECODERS), args.limit,
              args.batch_size, args.device, args.threads)
    return 0


# --- the report ---------------------------------------------------------------------------------------------------
def _loss_summary(log: Path) -> list[str]:
    records = [json.loads(x) for x in log.read_text().splitlines() if x.strip()] if log.is_file() else []
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    if not train:
        return ["(no training log)"]
    lines = ["| step | train loss | held-out loss | held-out token accuracy |", "|---:|---:|---:|---:|"]
    by_step = {r["step"]: r for r in evals}
    marks = sorted({train[0]["step"], *[r["step"] for r in train[:: max(1, len(train) // 8)]], train[-1]["step"],
                    *by_step})
    train_at = {r["step"]: r for r in train}
    for step in marks:
        t, e = train_at.get(step), by_step.get(step)
        lines.append(f"| {step} | {t['loss']:.4f} |" if t else f"| {step} | - |")
        acc = e.get("eval_accuracy", e.get("eval_acc")) if e else None
        lines[-1] += (f" {e['eval_loss']:.4f} | " + ("-" if acc is None else f"{acc:.3f}") + " |" if e else " - | - |")
    return lines


def _task_sizes(paired: list[dict[str, str]]) -> dict[str, str]:
    """Puzzles per task in the grid (the paired comparisons' n), so a --limit run says what it covered."""
    return {r["task"]: r["n"] for r in paired}


def _grid_table(rows: list[dict[str, str]], sizes: dict[str, str]) -> list[str]:
    easy, hard = sizes.get("sudoku_easy", "?"), sizes.get("sudoku_hard", "?")
    lines = [f"| decoder | sampler | easy solved (n={easy}) | hard solved (n={hard}) | easy blank-cell acc | hard "
             "blank-cell acc |", "|---|---|---:|---:|---:|---:|"]
    for opts, name in DECODERS.items():
        for sampler in SAMPLERS:
            row = next((r for r in rows if r["sampler"] == sampler and r["options"] == opts), None)
            if row is None:
                continue
            lines.append(f"| {name} | {sampler} | {float(row['sudoku_easy/solved']):.1%} | "
                         f"{float(row['sudoku_hard/solved']):.1%} | {float(row['sudoku_easy/cell_acc']):.3f} | "
                         f"{float(row['sudoku_hard/cell_acc']):.3f} |")
    return lines


def _paired_table(rows: list[dict[str, str]]) -> list[str]:
    lines = ["| task | decoder | A | B | both | only A | only B | neither | A - B [95% CI] | McNemar p |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["metric"] != "solved":
            continue
        p = float(r["p_value"])
        lines.append(f"| {r['task']} | {DECODERS.get(r['a_options'], r['a_options'])} | {r['a_sampler']} | "
                     f"{r['b_sampler']} | {r['both']} | {r['only_a']} | {r['only_b']} | {r['neither']} | "
                     f"{float(r['diff']):+.3f} [{float(r['ci_low']):+.3f}, {float(r['ci_high']):+.3f}] | "
                     f"{p:.2g} |")
    return lines


def report(args: argparse.Namespace) -> int:
    """The Markdown report from the result files of `evaluate`."""
    res = Path(args.results)
    gate = json.loads((res / "gate.json").read_text())
    text = [f"## Run: `{res}`", ""]
    text += ["### Training (from `train_log.jsonl`)", "", *_loss_summary(res / "train_log.jsonl"), ""]
    text += [f"### Gate: margin at {STEPS} steps on the first {gate['gate_puzzles']} easy puzzles", "",
             f"Solved: **{gate['gate_solved']:.1%}** (threshold {gate['threshold']:.0%})"
             + (f", blank-cell accuracy {gate['gate_cell_acc']:.1%}" if "gate_cell_acc" in gate else "") + ": "
             + ("passed, the grid below was run." if gate["passed"] else
                "**did not learn at this budget** - the decoder grid was not run (at this solve rate it would "
                "compare noise)."), ""]
    if gate["passed"]:
        paired = ablation.read_rows(res / "grid" / "paired.csv")
        text += [f"### Decoders x samplers at {STEPS} steps (`grid/results.csv`)", "",
                 *_grid_table(ablation.read_rows(res / "grid" / "results.csv"), _task_sizes(paired)), "",
                 "### Paired comparisons on the same puzzles (`grid/paired.csv`)", "",
                 *_paired_table(paired), ""]
    body = "\n".join(text) + "\n"
    out = Path(args.out)
    start, end = "<!-- paper-setting results: begin -->", "<!-- paper-setting results: end -->"
    if out.is_file() and start in out.read_text():
        head, rest = out.read_text().split(start, 1)
        tail = rest.split(end, 1)[1] if end in rest else ""
        out.write_text(f"{head}{start}\n{body}{end}{tail}")
    else:
        out.write_text(f"{start}\n{body}{end}\n")
    print(f"wrote {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from emdm_core.cli import run_cli

    def _run(argv):
        ap = argparse.ArgumentParser(prog="python -m studies.sudoku.paper_setting",
                                     description=__doc__.split("\n\n")[0])
        sub = ap.add_subparsers(dest="command", required=True)
        ev = sub.add_parser("evaluate", help="gate, then the decoder grid")
        ev.add_argument("--model", required=True)
        ev.add_argument("--out", required=True)
        ev.add_argument("--batch-size", default="64")
        ev.add_argument("--device", default="cpu")
        ev.add_argument("--threads", type=int, default=None)
        ev.add_argument("--limit", type=int, default=None, help="puzzles per task in the grid (default: all)")
        rp = sub.add_parser("report", help="write the Markdown report from evaluate's files")
        rp.add_argument("--results", required=True)
        rp.add_argument("--out", required=True)
        args = ap.parse_args(argv)
        return evaluate(args) if args.command == "evaluate" else report(args)

    return run_cli(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
