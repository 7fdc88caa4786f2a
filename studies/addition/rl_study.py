"""Does RL with a verifiable reward help `emdm:addition` at a low decoding budget? One command, before vs after.

    python -m studies.addition.rl_study --steps 8 --out runs/addition-rl      # writes result.json, result.md

1. RL prompts: `--n-prompts` fresh problems with carry chains of 8-24 places (seed 3; both committed test sets and
   the validation set excluded up to a+b = b+a), so the test items are never seen by the RL run.
2. `emdm_train --objective grpo` from `emdm:addition`: rollouts decoded by `margin` at the evaluation budget
   (`--steps` passes for the 34 tokens) at temperature 0.9, reward `leading_digits` (the task's exact match).
3. Both models decode the committed 1,000-item carry-chain test set (`addition_32_chains`) greedily (margin, the
   same budget); exact match per item; the paired difference with its 95% interval and the exact McNemar p-value.
   Each run is one comparison; several runs (e.g. two rollout temperatures) form a family: adjust across them
   (docs/experiments/rl-addition.md applies Holm).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tasks" / "addition" / "data"
TEST = DATA / "test_chains.jsonl"  # addition_32_chains: where decoding order and the budget matter


def solved(model: str, rows: list[dict], steps: int, batch: int = 250) -> list[int]:
    """1/0 per test row: margin at `steps` passes, greedy, answer = the leading digits (the task's rule)."""
    from emdm_sampling import generate, load_denoiser
    from emdm_train.rl.rewards import leading_digits

    den = load_denoiser(model)
    out = []
    for start in range(0, len(rows), batch):
        part = rows[start:start + batch]
        prompts = [den.tokenizer(r["prompt"], add_special_tokens=False)["input_ids"] for r in part]
        gen = generate(den, prompts, sampler="margin", steps=steps, gen_length=34)
        out += [int(leading_digits(den.tokenizer.decode(g, skip_special_tokens=True), r["response"], ""))
                for g, r in zip(gen.generated, part)]
    return out


def main(argv: list[str] | None = None) -> int:
    from emdm_core.stats import paired_counts
    from studies.addition.generate import draw, read_canonical

    ap = argparse.ArgumentParser(prog="python -m studies.addition.rl_study", description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8, help="decoding passes for the 34 answer tokens (train and test)")
    ap.add_argument("--n-prompts", type=int, default=4000)
    ap.add_argument("--rl-steps", type=int, default=150, help="optimizer steps of the RL run")
    ap.add_argument("--learning-rate", type=float, default=1e-4)
    ap.add_argument("--temperature", type=float, default=0.9, help="sampling temperature of the rollouts")
    ap.add_argument("--out", default="runs/addition-rl")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # === 1. RL prompts, held out from the test set ===
    exclude = read_canonical([TEST, DATA / "test.jsonl", *([ROOT / "runs/addition/val.jsonl"] if (
        ROOT / "runs/addition/val.jsonl").is_file() else [])])
    with (out / "prompts.jsonl").open("w") as f:
        for row in draw(args.n_prompts, seed=3, exclude=exclude, chains=(8, 24)):
            f.write(json.dumps(row) + "\n")
    # === 2. the RL run ===
    cmd = [sys.executable, "-m", "emdm_train", "--model", "emdm:addition", "--data", str(out / "prompts.jsonl"),
           "--data-format", "prompt_response", "--output", str(out / "model"), "--overwrite", "--objective", "grpo",
           "--rl-reward", "leading_digits", "--rl-sampler", "margin", "--rl-steps", str(args.steps),
           "--rl-gen-length", "34", "--rl-group-size", "4", "--batch-size", "32", "--rl-iterations", "2",
           "--rl-temperature", str(args.temperature), "--learning-rate", str(args.learning_rate),
           "--lr-scheduler", "constant",
           "--warmup-steps", "0", "--max-steps", str(args.rl_steps), "--log-every", "10", "--eval-every", "0",
           "--save-every", "50", "--val-split", "0.01", "--no-progress", "--report-to", "none", "--seed", "0"]
    start = time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)  # its log lines show the progress
    seconds = time.perf_counter() - start
    # === 3. before vs after on the same test items ===
    rows = [json.loads(line) for line in TEST.read_text().splitlines() if line.strip()]
    before, after = solved("emdm:addition", rows, args.steps), solved(str(out / "model"), rows, args.steps)
    counts = paired_counts(after, before)
    diff, low, high = counts.difference()
    log = [json.loads(x) for x in (out / "model" / "train_log.jsonl").read_text().splitlines()]
    rewards = [r["reward"] for r in log if "reward" in r]
    result = {"steps": args.steps, "n_test": len(rows), "before": sum(before) / len(rows),
              "after": sum(after) / len(rows), "diff": diff, "ci": [low, high], "only_after": counts.only_a,
              "only_before": counts.only_b, "mcnemar_p": counts.p_value, "rl_seconds": round(seconds),
              "rl_steps": args.rl_steps, "reward_first": rewards[0], "reward_last": rewards[-1],
              "command": " ".join(cmd[1:])}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    report = (f"| budget | test items | exact match before | after | after - before [95% CI] | only after / only "
              f"before | McNemar p |\n|---:|---:|---:|---:|---:|---:|---:|\n| {args.steps} passes | {len(rows)} | "
              f"{result['before']:.3f} | {result['after']:.3f} | {diff:+.3f} [{low:+.3f}, {high:+.3f}] | "
              f"{counts.only_a} / {counts.only_b} | {counts.p_value:.3g} |\n")
    (out / "result.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
