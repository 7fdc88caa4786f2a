"""Does self-correction help? (issue 12; seed 002: a revealed token of a masked model can never be corrected.)

For one task, two models of the same architecture, size, data, seed and number of steps are trained with the real
`emdm_train` CLI: a masked model (`--masking uniform`, MDLM) and a Duo model (`--noise uniform`). Each decodes the
same held-out items with the same per-item seeds:

- masked model: `margin` (reveal-only: a decided token stays), `remdm` (ReMDM remasking: revealed tokens can be
  masked again and re-predicted) and its control `remdm_eta0` (the same sampled reverse process, eta = 0: no
  remasking);
- Duo model: `duo` (Duo's ancestral update: every token stays revisable until the block ends), `entropy_bound`
  (DiffusionGemma's accept/renoise rule) and `margin` (reveal-only on a uniform canvas);

at two budgets (one forward pass per generated token, and twice that). Every comparison is paired on the same
items: exact McNemar p-value and a 95% interval of the paired difference in solve rate.

Tasks: `sudoku4` (held-out 4x4 puzzles whose solution grids never occur in training; a stock BERT, Kim et al.'s
unstructured setting), `sudoku9` (the committed 9x9 test puzzles; emdm's Sudoku architecture), `demo` (the demo
completions; a tiny BERT on the demo corpus: 10 items, so not testable, reported as such).

    python -m studies.self_correction --task sudoku4 --out runs/sc \
        --results-dir docs/experiments/results/self_correction

Resumable: a model whose folder holds weights is not trained again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from emdm_core import typed
from emdm_core.errors import ConfigError
from emdm_core.stats import paired_counts
from emdm_core.typed import at_least, option

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore", "EMDM_NO_RELAUNCH": "1"}
MODELS = {"masked": [], "duo": ["--noise", "uniform"]}
SAMPLERS = {  # model -> [(label, sampler options)]
    "masked": [("margin", {"sampler": "margin"}),
               ("remdm", {"sampler": "remdm", "temperature": 1.0, "eta": 0.04, "remdm_schedule": "cap"}),
               # the control of remdm: the same sampled reverse process without remasking (MDLM's ancestral)
               ("remdm_eta0", {"sampler": "remdm", "temperature": 1.0, "eta": 0.0})],
    "duo": [("duo", {"sampler": "duo", "temperature": 1.0}),
            ("entropy_bound", {"sampler": "entropy_bound", "temperature": 1.0}),
            ("margin", {"sampler": "margin"})],
}
COMPARISONS = [  # (a, b): "model:sampler" pairs, each at every budget
    ("duo:duo", "masked:margin"), ("duo:duo", "masked:remdm"), ("masked:remdm", "masked:remdm_eta0"),
    ("masked:remdm", "masked:margin"),
    ("duo:entropy_bound", "masked:margin"), ("duo:margin", "masked:margin")]


@dataclass(frozen=True)
class StudyConfig:
    """One task of the self-correction comparison."""

    task: str = option("sudoku4", "sudoku4 | sudoku9 | demo", choices=("sudoku4", "sudoku9", "demo"))
    train_steps: int | None = option(None, "optimizer steps of each model (default: the task's: 450 / 1200 / 1000)",
                                     check=at_least(1))
    eval_items: int | None = option(None, "held-out items to decode (default: the task's: 300 / 300 / all 10)",
                                    check=at_least(1))
    seed: int = option(0, "training seed of both models (decoding seeds: the item index)")


@dataclass
class Task:
    """What a task needs: training rows, held-out items, the initial model, the training flags, the scorer."""

    name: str
    gen_length: int
    train_steps: int
    eval_items: int
    train_flags: list[str]
    prepare: Callable[[Path], tuple[Path, list[dict]]]  # folder -> (training file, held-out items)
    init: Callable[[Path], Path]  # folder -> initial model directory (the same for both models)
    prompt: Callable[[Any, dict], list[int]]  # (tokenizer, item) -> prompt ids
    score: Callable[[dict, str], int]  # (item, decoded text) -> 1 if right


def _solves(puzzle: str, text: str) -> int:
    """The Sudoku task's own rule (tasks/sudoku/utils.py): the leading digits form a valid grid keeping the clues."""
    from studies.sudoku.bench import load_task_utils

    utils = load_task_utils()
    return int(utils.is_valid_completion(puzzle, utils.parse_answer(text)))


def _sudoku4_data(folder: Path) -> tuple[Path, list[dict]]:
    """3,000 training puzzles and held-out ones whose solution grids never occur in training (every 4th grid)."""
    from studies.sudoku import generate as S

    pool = list(S.generate(6000, seed=0, difficulties="easy,hard", size=4, chunk=6000))
    grids = sorted({r["solution"] for r in pool})
    held_out = set(grids[::4])
    train = [r for r in pool if r["solution"] not in held_out][:3000]
    test = [r for r in pool if r["solution"] in held_out]
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in train))
    return path, test


def _sudoku9_data(folder: Path) -> tuple[Path, list[dict]]:
    """2,000 generated easy/medium puzzles (none of the committed test puzzles); the committed test_easy puzzles."""
    from studies.sudoku import generate as S

    tests = [ROOT / "tasks" / "sudoku" / "data" / name for name in ("test_easy.jsonl", "test_hard.jsonl")]
    skip = {json.loads(line)["puzzle"] for t in tests for line in t.read_text().splitlines() if line.strip()}
    path = folder / "train.jsonl"
    if not path.is_file():
        rows = list(S.generate(2000, seed=11, difficulties="easy,medium", size=9, workers=2, exclude=skip))
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    test = [json.loads(line) for line in tests[0].read_text().splitlines() if line.strip()]
    return path, test


def _demo_data(folder: Path) -> tuple[Path, list[dict]]:
    from emdm_models.tiny import DEMO_CORPUS

    path = folder / "train.txt"
    path.write_text("\n".join(DEMO_CORPUS * 40))
    items = [json.loads(line) for line in (ROOT / "tasks" / "demo" / "emdm_demo_gen.jsonl").read_text().splitlines()
             if line.strip()]
    return path, items


def _bert4(folder: Path) -> Path:
    from emdm_models.architectures.sudoku import save_sudoku_encoder_dir

    return save_sudoku_encoder_dir(folder / "init", "bert", "cpu", grid_size=4, hidden_size=128, intermediate_size=512,
                                   num_hidden_layers=2, num_attention_heads=4)


def _sudoku_arch9(folder: Path) -> Path:
    from emdm_models.architectures import save_sudoku_model_dir

    return save_sudoku_model_dir(folder / "init", "cpu", seed=0, peer_attention=True)


def _demo_bert(folder: Path) -> Path:
    from emdm_models.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(folder / "init", "bert", hidden_size=64)


def _as_trained(tok: Any, text: str) -> list[int]:
    """The prompt as a training row starts: the tokenizer's leading special token ([CLS]), no closing [SEP]."""
    ids = tok(text)["input_ids"]
    return ids[:-1] if ids and ids[-1] == tok.sep_token_id else ids


def _first_word(item: dict, text: str) -> int:
    words = text.replace(".", " . ").split()
    return int(bool(words) and words[0] == item["answer"])


TASKS = {
    "sudoku4": Task("sudoku4", 16, 450, 300,
                    ["--data-format", "prompt_response", "--max-length", "34", "--batch-size", "64",
                     "--learning-rate", "1e-3", "--warmup-steps", "20", "--weight-decay", "0",
                     "--augment", "studies.sudoku.augment:symmetries"],
                    _sudoku4_data, _bert4, lambda tok, r: tok(r["puzzle"])["input_ids"],
                    lambda r, text: _solves(r["puzzle"], text)),
    # the shipped Sudoku recipe (studies/sudoku/recipes/sudoku-cpu.yaml) at a shorter budget; the architecture's
    # noise vocabulary is the digits 1-9 (config.noise_token_ids)
    "sudoku9": Task("sudoku9", 81, 1200, 300,
                    ["--data-format", "prompt_response", "--max-length", "164", "--batch-size", "128",
                     "--learning-rate", "2e-3", "--warmup-steps", "150", "--weight-decay", "0.1",
                     "--lr-scheduler", "cosine", "--augment", "studies.sudoku.augment:symmetries"],
                    _sudoku9_data, _sudoku_arch9, lambda tok, r: tok(r["puzzle"])["input_ids"],
                    lambda r, text: _solves(r["puzzle"], text)),
    "demo": Task("demo", 4, 1000, 10,
                 ["--max-length", "24", "--batch-size", "16", "--learning-rate", "3e-3", "--no-pack",
                  "--config-overrides", "initializer_range=0.02"],
                 _demo_data, _demo_bert, lambda tok, r: _as_trained(tok, r["prompt"]), _first_word),
}


def run_with_progress(cmd: list[str], name: str, folder: Path, steps: int, every: float = 30.0) -> tuple[int, str]:
    """Run one training process, its output in FOLDER/train.out, and say every `every` seconds how far it is (the
    step and loss of its train_log.jsonl): a half-hour training phase is not silent. Returns (exit code, last line)."""
    log_path, progress = folder / "train.out", folder / "train_log.jsonl"
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT, text=True)
        start = last = time.perf_counter()
        while proc.poll() is None:
            time.sleep(2.0)
            if time.perf_counter() - last < every or not progress.is_file():
                continue
            last = time.perf_counter()
            done = [r for r in map(json.loads, filter(str.strip, progress.read_text().splitlines())) if "loss" in r]
            if done:
                print(f"self_correction: training {name}: step {done[-1]['step']}/{steps}, loss "
                      f"{done[-1]['loss']:.4f}, {last - start:.0f}s", file=sys.stderr, flush=True)
    lines = log_path.read_text().strip().splitlines()
    return proc.returncode, (lines[-1] if lines else "?")


def train_models(cfg: StudyConfig, task: Task, out: Path, data: Path, init: Path) -> dict[str, dict]:
    """Both models in parallel (one thread each); a folder that already holds weights is kept."""
    steps = cfg.train_steps or task.train_steps

    def one(name: str) -> dict:
        folder = out / name
        if (folder / "model.safetensors").is_file():
            return json.loads((folder / "study_train.json").read_text())
        start = time.perf_counter()
        cmd = [sys.executable, "-m", "emdm_train", "--model", str(init), "--from-scratch", "--data", str(data),
               "--output", str(folder), "--max-steps", str(steps), "--val-split", "0", "--eval-every", "0",
               "--save-every", "0", "--log-every", "50", "--seed", str(cfg.seed), "--cpu", "--report-to", "none",
               "--no-progress", "--overwrite", *task.train_flags, *MODELS[name]]
        folder.mkdir(parents=True, exist_ok=True)
        returncode, last_line = run_with_progress(cmd, name, folder, steps)
        if returncode:
            raise ConfigError(f"training the {name} model failed: {last_line}")
        log = [json.loads(x) for x in (folder / "train_log.jsonl").read_text().splitlines() if x.strip()]
        info = {"steps": steps, "seconds": round(time.perf_counter() - start, 1),
                "final_loss": [r["loss"] for r in log if "loss" in r][-1], "command": " ".join(cmd[1:])}
        (folder / "study_train.json").write_text(json.dumps(info, indent=1))
        return info

    with ThreadPoolExecutor(2) as pool:
        return dict(zip(MODELS, pool.map(one, MODELS)))


def decode(task: Task, out: Path, items: list[dict]) -> list[dict]:
    """Every (model, sampler, budget) on the same items with the same per-item seeds: per-item outcomes."""
    from emdm_sampling import generate, load_denoiser

    rows = []
    for model in MODELS:
        den = load_denoiser(out / model)
        prompts = [task.prompt(den.tokenizer, r) for r in items]
        for label, options in SAMPLERS[model]:
            for budget in (task.gen_length, 2 * task.gen_length):
                start = time.perf_counter()
                res = generate(den, prompts, gen_length=task.gen_length, steps=budget, seeds=list(range(len(items))),
                               **options)
                texts = [den.tokenizer.decode(g, skip_special_tokens=True) for g in res.generated]
                outcomes = [task.score(r, t) for r, t in zip(items, texts)]
                rows.append({"model": model, "sampler": label, "steps": budget, "options": options,
                             "solved": sum(outcomes), "n": len(items), "nfe": res.nfe,
                             "seconds": round(time.perf_counter() - start, 1), "outcomes": outcomes})
                print(f"{model:6s} {label:14s} steps {budget:3d}: {sum(outcomes)}/{len(items)} (nfe {res.nfe})",
                      flush=True)
    return rows


def compare(rows: list[dict], gen_length: int) -> list[dict]:
    """The paired comparisons (same items, same seeds), plus more refinement steps for the Duo sampler."""
    key = {(r["model"] + ":" + r["sampler"], r["steps"]): r for r in rows}
    pairs = [(a, b, s, s) for a, b in COMPARISONS for s in (gen_length, 2 * gen_length)]
    pairs += [("duo:duo", "duo:duo", 2 * gen_length, gen_length),
              ("masked:remdm", "masked:remdm", 2 * gen_length, gen_length)]
    out = []
    for a, b, sa, sb in pairs:
        counts = paired_counts(key[(a, sa)]["outcomes"], key[(b, sb)]["outcomes"])
        diff, lo, hi = counts.difference()
        out.append({"a": a, "a_steps": sa, "b": b, "b_steps": sb, "only_a": counts.only_a, "only_b": counts.only_b,
                    "n": counts.n, "difference": diff, "ci95": [lo, hi], "mcnemar_p": counts.p_value})
    return out


def report(cfg: StudyConfig, task: Task, trained: dict, rows: list[dict], pairs: list[dict]) -> str:
    what = "the demo completions (sentences of the training corpus)" if task.name == "demo" else "held-out items"
    lines = [f"### {task.name}: {rows[0]['n']} {what}, {cfg.train_steps or task.train_steps} training steps per "
             f"model", "", "| model | trained | final loss |", "|---|---|---|"]
    for name, info in trained.items():
        lines.append(f"| {name} | {info['steps']} steps, {info['seconds']:.0f} s | {info['final_loss']:.4f} |")
    lines += ["", "| model | sampler | steps | solved | rate | forward passes |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['sampler']} | {r['steps']} | {r['solved']}/{r['n']} | "
                     f"{r['solved'] / r['n']:.1%} | {r['nfe']} |")
    lines += ["", "| comparison (paired, same items and seeds) | only A | only B | difference [95% CI] | McNemar p |",
              "|---|---|---|---|---|"]
    for p in pairs:
        lo, hi = p["ci95"]
        lines.append(f"| {p['a']} @{p['a_steps']} vs {p['b']} @{p['b_steps']} | {p['only_a']} | {p['only_b']} | "
                     f"{p['difference']:+.1%} [{lo:+.1%}, {hi:+.1%}] | {p['mcnemar_p']:.2g} |")
    if rows[0]["n"] < 30:
        lines += ["", f"{rows[0]['n']} items: not testable at this scale (a paired test on so few items cannot "
                      f"separate the samplers unless one of them fails almost everywhere)."]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m studies.self_correction",
                                 description="A masked and a Duo model of the same size and budget, their samplers "
                                             "on the same held-out items; paired comparisons. Resumable.")
    ap.add_argument("--out", required=True, help="work folder: data, the two models, decodings")
    ap.add_argument("--results-dir", default=None, help="where TASK.json and TASK.md go [OUT]")
    typed.add_arguments(ap, StudyConfig)
    return ap


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    cfg = typed.build(StudyConfig, {f.name: getattr(args, f.name) for f in typed.fields(StudyConfig)
                                    if hasattr(args, f.name)}, origin="the study options")
    task = TASKS[cfg.task]
    out = Path(os.path.expanduser(args.out)) / cfg.task
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    data, items = task.prepare(out)
    items = items[:cfg.eval_items or task.eval_items]
    init = out / "init" if (out / "init" / "config.json").is_file() else task.init(out)
    trained = train_models(cfg, task, out, data, init)
    rows = decode(task, out, items)
    pairs = compare(rows, task.gen_length)
    results = Path(os.path.expanduser(args.results_dir)) if args.results_dir else out
    results.mkdir(parents=True, exist_ok=True)
    command = "python -m studies.self_correction " + " ".join(argv if argv is not None else sys.argv[1:])
    (results / f"{cfg.task}.json").write_text(json.dumps(
        {"config": dataclasses.asdict(cfg), "command": command, "trained": trained, "decodings": rows,
         "comparisons": pairs}, indent=1))
    text = report(cfg, task, trained, rows, pairs)
    (results / f"{cfg.task}.md").write_text(text)
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    from emdm_core.cli import run_cli

    return run_cli(_main, argv, interrupted="interrupted; run the same command again to continue")


if __name__ == "__main__":
    sys.exit(main())
