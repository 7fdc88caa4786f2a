"""Plot a training run's loss curve from its `train_log.jsonl`, or compare several runs.

    python -m emdm_train.plot runs/sudoku --out loss.png
    python -m emdm_train.plot runs/a runs/b --labels plain peer --out compare.png   # held-out loss per run
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from emdm_core.errors import EMDMError


def read_log(run_dir: str | Path) -> list[dict]:
    """The records of `run_dir/train_log.jsonl` (one dict per logging or evaluation step)."""
    path = Path(run_dir) / "train_log.jsonl"
    if not path.is_file():
        raise EMDMError(f"{path} does not exist; pass the --output directory of an emdm_train run")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _axes(title: str):
    """A fresh (figure, axes) with the loss plots' size, labels and title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats per maskable token)")
    ax.set_title(title)
    return fig, ax


def _save(fig, ax, out: str | Path) -> Path:
    """Add the legend, write the PNG to `out` and close the figure."""
    import matplotlib.pyplot as plt

    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return Path(out)


def _curves(records: list[dict]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(training loss, held-out loss) as (step, value) pairs."""
    return ([(r["step"], r["loss"]) for r in records if "loss" in r],
            [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r])


RL_CURVES = ("reward", "kl", "clip_ratio")  # what an RL run (--objective grpo | wd1) logs besides its loss


def plot_rl(records: list[dict], out: str | Path, title: str = "") -> Path:
    """An RL run: mean reward of the rollouts, KL to the reference and the clipped share against the step."""
    fig, ax = _axes(title)
    ax.set_ylabel("value")
    for name in RL_CURVES:
        points = [(r["step"], r[name]) for r in records if name in r]
        if points:
            ax.plot(*zip(*points), label=name.replace("_", " "), lw=1)
    ax.grid(alpha=0.3)
    return _save(fig, ax, out)


def plot_loss(records: list[dict], out: str | Path, title: str = "") -> Path:
    """Draw training loss and held-out loss against the step; write a PNG to `out` (an RL run's reward, KL and
    clip ratio go beside it, to `<out stem>_rl.png`)."""
    if any("reward" in r for r in records):
        plot_rl(records, Path(out).with_name(Path(out).stem + "_rl.png"), title)
    fig, ax = _axes(title)
    train, held = _curves(records)
    if train:
        ax.plot(*zip(*train), label="training loss", lw=1)
    if held:
        ax.plot(*zip(*held), "o-", label="held-out loss (uniform ELBO)", lw=1.5)
    ax.grid(alpha=0.3)
    return _save(fig, ax, out)


def plot_runs(runs: dict[str, list[dict]], out: str | Path, title: str = "") -> Path:
    """Draw each run's held-out loss (training loss faint, same colour) against the step; write a PNG."""
    fig, ax = _axes(title)
    for i, (label, records) in enumerate(runs.items()):
        train, held = _curves(records)
        if train:
            ax.plot(*zip(*train), color=f"C{i}", lw=0.8, alpha=0.35)
        if held:
            ax.plot(*zip(*held), "o-", color=f"C{i}", lw=1.5, ms=3, label=f"{label} (held-out)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    return _save(fig, ax, out)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (emdm's errors print as one line, exit status 2)."""
    from emdm_core.cli import run_cli

    return run_cli(_main, argv)


def _main(argv: list[str] | None) -> int:
    p = argparse.ArgumentParser(prog="python -m emdm_train.plot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", nargs="+", help="the --output directory of an emdm_train run (several: compare them)")
    p.add_argument("--labels", nargs="*", default=None, help="one legend label per run (default: directory names)")
    p.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/loss.png; several runs: loss_compare.png)")
    p.add_argument("--title", default="")
    args = p.parse_args(argv)
    labels = args.labels or [Path(r).name for r in args.run_dir]
    if len(labels) != len(args.run_dir):
        p.error(f"--labels gives {len(labels)} labels for {len(args.run_dir)} runs; give one per run")
    if len(args.run_dir) == 1:
        out = plot_loss(read_log(args.run_dir[0]), args.out or Path(args.run_dir[0]) / "loss.png", args.title)
    else:
        runs = {label: read_log(run) for label, run in zip(labels, args.run_dir)}
        out = plot_runs(runs, args.out or "loss_compare.png", args.title)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
