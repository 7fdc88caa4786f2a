"""Accuracy against forward passes on a trained model: every decoder x cache mode x (steps or threshold), one run.

    python benchmarks/accuracy_vs_passes.py                      # emdm:addition on addition_32, 1000 items
    python benchmarks/accuracy_vs_passes.py --pretrained emdm:sudoku --task sudoku_easy --metric solved --limit 500
    python benchmarks/accuracy_vs_passes.py --quick              # a few settings on 100 items (a smoke run)

The model is loaded once as lm-eval's `--model emdm` (so each setting decodes exactly as `lm_eval --model emdm
--model_args pretrained=...,<setting>` would) and each setting is one `simple_evaluate` on the task. The grid:

* the baseline: `--baseline` (margin) revealing one token per pass (steps = the task's generation length), no cache;
* step budgets: `--step-samplers` at steps G, G/2, G/4, G/8;
* thresholds (parallel decoding): every registered strategy that reads `threshold` at 0.9, and `--threshold-samplers`
  also at each of `--thresholds`;
* every other registered strategy that can decode the model, at its own rule's defaults with steps G;
* caches: `--cache-sampler` (margin) at one token per pass and at each threshold, with cache none / prefix / dual,
  over one block and over blocks of G/2 (with one block `dual` equals `prefix`: there is no suffix to cache, so
  it is not run): each cache point is paired with the same setting without a cache, so its cost is the cache's own.

Per setting: accuracy with its 95% Wilson interval, mean forward passes per item (full / cached), tokens per
forward, wall time relative to the baseline, and against the baseline on the same items the paired difference
(95% interval), exact McNemar p and Holm-adjusted p over the family. Timing: one warm-up, then the baseline is
timed first and again last (the table states both), every setting's time divided by their mean; the decodes of the
two baseline runs must agree item for item (a determinism check). Written to `--out`: `results.csv`,
`outcomes.jsonl`, `results.md` and `accuracy_vs_passes.png` (with the Pareto frontier).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

THRESHOLD_FIRST = 0.9


@dataclass(frozen=True)
class Setting:
    """One decoding setting of the grid: a sampler, a step budget and sampler options (cache, threshold, blocks)."""

    sampler: str
    steps: int
    options: tuple[tuple[str, str], ...] = ()
    group: str = field(default="", compare=False)

    @property
    def label(self) -> str:
        return f"{self.sampler}@{self.steps}" + "".join(f" {k}={v}" for k, v in self.options)

    def kwargs(self) -> dict[str, Any]:
        return {"sampler": self.sampler, "steps": self.steps, **dict(self.options)}


def _opts(**kwargs: Any) -> tuple[tuple[str, str], ...]:
    return tuple((k, str(v)) for k, v in kwargs.items() if v is not None)


def build_grid(strategies: dict[str, tuple[str, ...]], gen: int, args: argparse.Namespace) -> list[Setting]:
    """The settings (baseline first, no duplicates). `strategies`: name -> the shared options it honours, for
    every registered strategy that can decode the model."""
    half = max(gen // 2, 1)
    grid = [Setting(args.baseline, gen, _opts(cache="none"), "baseline")]
    for name in args.step_samplers:
        for steps in sorted({gen, half, max(gen // 4, 1), max(gen // 8, 1)}, reverse=True):
            grid.append(Setting(name, steps, _opts(cache="none"), "steps"))
    for name, honours in strategies.items():
        if "threshold" in honours:
            for thr in ([THRESHOLD_FIRST, *args.thresholds] if name in args.threshold_samplers else [THRESHOLD_FIRST]):
                grid.append(Setting(name, gen, _opts(cache="none", threshold=thr), "threshold"))
        elif name not in args.step_samplers:
            grid.append(Setting(name, gen, _opts(cache="none"), "own rule"))
    for block in (None, half):
        for cache in ("none", "prefix", "dual"):
            if cache == "dual" and block is None:
                continue  # one block: nothing after it to cache, dual = prefix
            for thr in (None, THRESHOLD_FIRST, *args.thresholds):
                grid.append(Setting(args.cache_sampler, gen, _opts(cache=cache, threshold=thr, block_length=block),
                                    "cache " + cache))
    seen, unique = set(), []
    for s in grid:
        if s not in seen:
            seen.add(s)
            unique.append(s)
    return unique


def quick_grid(gen: int, args: argparse.Namespace) -> list[Setting]:
    """A handful of settings for a smoke run."""
    return [Setting(args.baseline, gen, _opts(cache="none"), "baseline"),
            Setting(args.baseline, max(gen // 4, 1), _opts(cache="none"), "steps"),
            Setting(args.baseline, gen, _opts(cache="none", threshold=THRESHOLD_FIRST), "threshold"),
            Setting(args.baseline, gen, _opts(cache="prefix", threshold=THRESHOLD_FIRST), "cache prefix")]


def _speed(results: dict, task: str) -> dict[str, float]:
    values = results["results"][task]
    return {k: float(values[f"{k},none"]) for k in ("forward_passes_per_item", "full_passes_per_item",
                                                    "cached_passes_per_item", "tokens_per_forward")
            if f"{k},none" in values}


def run(args: argparse.Namespace) -> Path:
    import torch
    from lm_eval import evaluator
    from tqdm import tqdm

    from emdm_eval.model import EMDMLM
    from emdm_eval.paired import document_outcomes
    from emdm_eval.registration import register
    from emdm_sampling.strategies import SAMPLERS, model_problem

    torch.set_num_threads(args.threads)
    register()
    lm = EMDMLM(pretrained=args.pretrained, batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                seed=0, sampler=args.baseline)
    from emdm_eval.ablation import _check_tasks, _task_manager

    tm = _task_manager(args.include_path or [])
    _check_tasks(tm, [args.task])
    task_obj = tm.load_task_or_group([args.task])[args.task]
    gen = int(task_obj.config.generation_kwargs.get("max_gen_toks", 0)) or lm.sampler_config.gen_length
    strategies = {name: SAMPLERS.get(name).honours for name in SAMPLERS.available()
                  if model_problem(SAMPLERS.get(name), lm.denoiser.contract) is None}
    grid = quick_grid(gen, args) if args.quick else build_grid(strategies, gen, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"accuracy_vs_passes: {args.pretrained} ({sum(p.numel() for p in lm.denoiser.model.parameters()) / 1e6:.2f}M "
          f"parameters, {lm.denoiser.__class__.__name__}) on {args.task}, {args.limit} items, generation length "
          f"{gen}; {len(grid)} settings; {torch.get_num_threads()} thread(s) on {platform.processor() or 'cpu'}",
          file=sys.stderr)

    def evaluate(setting: Setting, limit: int | None) -> tuple[dict, float]:
        lm.configure_sampler(**setting.kwargs())
        start = time.perf_counter()
        results = evaluator.simple_evaluate(model=lm, tasks=[args.task], limit=limit, task_manager=tm,
                                            log_samples=True, bootstrap_iters=0, random_seed=0, numpy_random_seed=0,
                                            torch_random_seed=0, fewshot_random_seed=0, verbosity="ERROR")
        return results, time.perf_counter() - start

    evaluate(grid[0], min(args.batch_size, args.limit))  # warm-up: allocations, lm-eval's task set-up
    outcomes: dict[str, dict[int, float]] = {}
    costs: dict[str, dict[str, Any]] = {}
    samples_of: dict[str, dict[int, str]] = {}
    order = [*grid, grid[0]]  # the baseline again at the end: its two timings bracket the run
    baseline_seconds = []
    with (out / "outcomes.jsonl").open("w") as log:
        for index, setting in enumerate(tqdm(order, desc="settings", unit="setting")):
            results, seconds = evaluate(setting, args.limit)
            docs = {d["doc_id"]: d[args.metric] for d in document_outcomes(results) if d["task"] == args.task}
            texts = {int(s["doc_id"]): s["filtered_resps"][0] for s in results["samples"][args.task]}
            if setting == grid[0]:
                baseline_seconds.append(seconds)
                if index > 0:
                    changed = [i for i in texts if texts[i] != samples_of[setting.label][i]]
                    if changed:
                        raise SystemExit(f"error: the baseline decoded {len(changed)} items differently on its "
                                         f"second run (first: item {changed[0]}); the decode is not deterministic")
                    continue
            samples_of[setting.label] = texts
            outcomes[setting.label] = docs
            speed = _speed(results, args.task)
            costs[setting.label] = {"group": setting.group, "sampler": setting.sampler, "steps": setting.steps,
                                    "options": ",".join(f"{k}={v}" for k, v in setting.options),
                                    "passes": speed["forward_passes_per_item"],
                                    "full_passes": speed.get("full_passes_per_item"),
                                    "cached_passes": speed.get("cached_passes_per_item"),
                                    "tokens_per_forward": speed.get("tokens_per_forward"), "seconds": seconds}
            for doc_id, value in sorted(docs.items()):
                log.write(json.dumps({"setting": setting.label, "doc_id": doc_id, args.metric: value,
                                      "text": texts.get(doc_id)}) + "\n")
    reference = sum(baseline_seconds) / len(baseline_seconds)
    for cost in costs.values():
        cost["time_ratio"] = cost["seconds"] / reference
    write_reports(out, outcomes, costs, grid[0].label, args, baseline_seconds)
    return out


def write_reports(out: Path, outcomes: dict, costs: dict, baseline: str, args: argparse.Namespace,
                  baseline_seconds: list[float]) -> None:
    from emdm_eval.frontier import frontier_rows, markdown, plot

    rows = frontier_rows(outcomes, costs, baseline)
    columns = ["point", "group", "sampler", "steps", "options", "n", "accuracy", "acc_low", "acc_high", "passes",
               "full_passes", "cached_passes", "tokens_per_forward", "seconds", "time_ratio", "diff", "diff_low",
               "diff_high", "only_point", "only_baseline", "p", "p_holm"]
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    title = f"{args.pretrained} on {args.task} ({rows[0]['n']} items): {args.metric} against forward passes"
    note = (f"\nBaseline wall time: {baseline_seconds[0]:.1f} s first, {baseline_seconds[-1]:.1f} s last (the "
            f"two runs bracket the grid; time ratios divide by their mean, so a drift between them is the timing's "
            f"noise). {args.threads} thread(s), batch size {args.batch_size}, device {args.device}, {args.dtype}.\n")
    (out / "results.md").write_text(markdown(rows, baseline, args.metric, title, timed=True) + note)
    plot(rows, out / "accuracy_vs_passes.png", args.metric, title, group_key="group")
    print((out / "results.md").read_text())
    print(f"wrote {out}/results.csv, results.md, outcomes.jsonl, accuracy_vs_passes.png")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrained", default="emdm:addition", help="checkpoint (default: the shipped emdm:addition)")
    ap.add_argument("--task", default="addition_32", help="an lm-eval generation task (default addition_32)")
    ap.add_argument("--metric", default="exact_match", help="the task's 0/1 per-item metric (default exact_match)")
    ap.add_argument("--limit", type=int, default=1000, help="items (default 1000)")
    ap.add_argument("--baseline", default="margin", help="the one-token-per-pass baseline's sampler")
    ap.add_argument("--step-samplers", nargs="*", default=["margin", "top_prob", "entropy"],
                    help="samplers run at steps G, G/2, G/4, G/8")
    ap.add_argument("--threshold-samplers", nargs="*", default=["margin", "top_prob", "entropy", "credit"],
                    help="samplers run at every --thresholds value (the others that read a threshold: 0.9 only)")
    ap.add_argument("--thresholds", nargs="*", type=float, default=[0.7, 0.5], help="thresholds besides 0.9")
    ap.add_argument("--cache-sampler", default="margin", help="the sampler of the cache comparisons")
    ap.add_argument("--quick", action="store_true", help="four settings only (a smoke run)")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 (the model's weights and compute)")
    ap.add_argument("--include-path", nargs="*", help="more lm-eval task folders")
    ap.add_argument("--out", default="runs/accuracy_vs_passes", help="output folder")
    return ap


def main(argv: list[str] | None = None) -> int:
    from emdm_core.errors import ConfigError

    args = build_parser().parse_args(argv)
    try:
        run(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
