"""Command line: `python -m emdm_train --model M --data D --output OUT --max-steps N [...]` (see --help)."""

from __future__ import annotations

import sys
from typing import Sequence


def _main(argv: Sequence[str] | None) -> int:
    from emdm_core.launch import relaunch_on_cpu, requested_cpu_processes

    from .config import parse_args

    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = parse_args(argv)
    nprocs = requested_cpu_processes()
    if nprocs > 1:
        return relaunch_on_cpu(nprocs, ["-m", "emdm_train", *argv])
    from .trainer import train

    train(cfg)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse options and train; emdm errors become one `error: ...` line with exit status 2."""
    from emdm_core.cli import run_cli

    return run_cli(_main, argv, interrupted="interrupted; continue with --resume")


if __name__ == "__main__":
    sys.exit(main())
