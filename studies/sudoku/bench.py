"""Sudoku benchmark: per sampler, solve rate, forward passes per puzzle and puzzles/s, with the step schedule and with
confidence-threshold (parallel) decoding.

    python -m studies.sudoku.bench                # the embedded emdm:sudoku, test_easy, CPU
    python -m studies.sudoku.bench --pretrained DIR --n 500 --batch-size 128 --device cuda
    python -m studies.sudoku.bench --pretrained DIR --steps 27 50 81 --thresholds 0.9 0.7 0.5

Uses emdm_sampling directly (load_denoiser + generate) and the task's own scoring (tasks/sudoku/utils.py): a puzzle
counts as solved when the 81 generated digits are a valid grid that keeps every clue. The prompt is the puzzle plus
[SEP], as in training. Each row decodes the same `--n` puzzles (each with its own seed) in batches of
`--batch-size`, after a warm-up batch; "passes/puzzle" is the mean number of forward passes a puzzle took part in
(= steps with the schedule; fewer with a threshold), "batched passes" the forward passes actually run. Prints a
Markdown table (and writes it to `--out`).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from emdm_sampling import SamplerConfig, generate, load_denoiser  # noqa: E402
from emdm_core.errors import CheckpointError  # noqa: E402

DEFAULT_DATA = ROOT / "tasks" / "sudoku" / "data" / "test_easy.jsonl"


@functools.lru_cache(maxsize=1)
def load_task_utils():
    """Import tasks/sudoku/utils.py by path (as lm-eval does): the task's own scoring (imported once)."""
    spec = importlib.util.spec_from_file_location("sudoku_task_utils", ROOT / "tasks" / "sudoku" / "utils.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def default_checkpoint() -> str:
    """The embedded emdm:sudoku checkpoint (the README's main job), or a clear error in a build without it."""
    from emdm_models.loading import available_embedded

    if "sudoku" in available_embedded():
        return "emdm:sudoku"
    raise CheckpointError("no Sudoku checkpoint embedded in this build; pass --pretrained DIR")


def decode_all(den, prompts: list[list[int]], batch_size: int, sync, **kw) -> tuple[list[list[int]], list[int], int,
                                                                                     float]:
    """Decode prompts in batches: (generations, passes per row, batched passes, seconds)."""
    gens: list[list[int]] = []
    row_nfe: list[int] = []
    nfe, seconds = 0, 0.0
    for b in range(0, len(prompts), batch_size):
        chunk = prompts[b:b + batch_size]
        sync()
        t = time.perf_counter()
        out = generate(den, chunk, seeds=list(range(b, b + len(chunk))), **kw)
        sync()
        seconds += time.perf_counter() - t
        gens += out.generated
        row_nfe += out.row_nfe
        nfe += out.nfe
    return gens, row_nfe, nfe, seconds


def bench(args: argparse.Namespace) -> str:
    """Run every (sampler, setting) row and return the Markdown table."""
    if args.threads:
        torch.set_num_threads(args.threads)
    for sampler in args.samplers:  # unknown samplers and bad thresholds fail before the model loads
        for t in [None, *args.thresholds]:
            SamplerConfig(sampler=sampler, steps=max(args.steps), gen_length=81, threshold=t)
    path = args.pretrained or default_checkpoint()
    den = load_denoiser(path, device=args.device, dtype=args.dtype)
    utils = load_task_utils()
    with open(args.data) as f:
        docs = [json.loads(line) for line in f if line.strip()][:args.n]
    prompts = [den.tokenizer(d["puzzle"])["input_ids"] for d in docs]
    sync = torch.cuda.synchronize if den.device.type == "cuda" else (lambda: None)
    settings = [(s, {"steps": n, "threshold": None}) for s in args.samplers for n in args.steps]
    settings += [(s, {"steps": 81, "threshold": t}) for s in args.samplers for t in args.thresholds]
    generate(den, prompts[:min(len(prompts), args.batch_size)], sampler="margin", steps=4, gen_length=81)  # warm-up
    n_params = sum(p.numel() for p in den.model.parameters())
    lines = [f"checkpoint {path} ({n_params / 1e6:.2f}M parameters), {len(docs)} puzzles from {Path(args.data).name}, "
             f"batch {args.batch_size}, device {den.device}, dtype {next(den.model.parameters()).dtype}, threads "
             f"{torch.get_num_threads()}", "",
             "| sampler | steps | threshold | solved | cell_acc | passes/puzzle | batched passes | seconds "
             "| puzzles/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for sampler, kw in tqdm(settings, desc="bench_sudoku", unit="setting"):
        gens, row_nfe, nfe, secs = decode_all(den, prompts, args.batch_size, sync, sampler=sampler, gen_length=81,
                                              temperature=0.0, **kw)
        scores = [utils.score(d["puzzle"], d["solution"], den.tokenizer.decode(g, skip_special_tokens=True))
                  for d, g in zip(docs, gens)]
        solved = sum(s["solved"] for s in scores) / len(scores)
        stderr = math.sqrt(solved * (1 - solved) / max(len(scores) - 1, 1))
        cell = sum(s["cell_acc"] for s in scores) / len(scores)
        steps = "-" if kw["threshold"] is not None else str(kw["steps"])
        thr = "-" if kw["threshold"] is None else f"{kw['threshold']:g}"
        lines.append(f"| {sampler} | {steps} | {thr} | {solved:.3f} ± {stderr:.3f} | {cell:.3f} | "
                     f"{sum(row_nfe) / len(row_nfe):.1f} | {nfe} | {secs:.1f} | {len(docs) / secs:.1f} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrained", default=None,
                   help="Sudoku checkpoint (default: the embedded emdm:sudoku)")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="JSONL with puzzle/solution fields")
    p.add_argument("--n", type=int, default=256, help="puzzles to decode per row")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--samplers", nargs="+", default=["vanilla", "top_prob", "margin", "entropy"])
    p.add_argument("--steps", type=int, nargs="+", default=[50], help="step budgets of the schedule rows")
    p.add_argument("--thresholds", type=float, nargs="*", default=[0.9, 0.7], help="parallel decoding rows")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", default=None, help="float32 / bfloat16 (default: float32 on CPU, bfloat16 on GPU)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", default=None, help="also write the table to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI: print the benchmark table; emdm's errors print as one line (exit status 2)."""
    from emdm_core.cli import run_cli

    return run_cli(_main, argv)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    table = bench(args)
    print(table, end="")
    if args.out:
        Path(args.out).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
