"""Plot a training run's loss curve from its `train_log.jsonl`.

    python -m emdm_train.plot runs/sudoku --out loss.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from emdm_sampling.errors import EMDMError


def read_log(run_dir: str | Path) -> list[dict]:
    """The records of `run_dir/train_log.jsonl` (one dict per logging or evaluation step)."""
    path = Path(run_dir) / "train_log.jsonl"
    if not path.is_file():
        raise EMDMError(f"{path} does not exist; pass the --output directory of an emdm_train run")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss(records: list[dict], out: str | Path, title: str = "") -> Path:
    """Draw training loss and held-out loss against the step; write a PNG to `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    held = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    if train:
        ax.plot(*zip(*train), label="training loss", lw=1)
    if held:
        ax.plot(*zip(*held), "o-", label="held-out loss (uniform ELBO)", lw=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats per maskable token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(prog="python -m emdm_train.plot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="the --output directory of an emdm_train run")
    p.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/loss.png)")
    p.add_argument("--title", default="")
    args = p.parse_args(argv)
    try:
        out = plot_loss(read_log(args.run_dir), args.out or Path(args.run_dir) / "loss.png", args.title)
    except EMDMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
