"""Command line: `python -m emdm_train --model M --data D --output OUT --max-steps N [...]` (see --help)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Parse options, train, and turn emdm errors into one `error: ...` line with exit status 2."""
    from emdm_sampling.errors import EMDMError

    from .config import parse_args
    from emdm_sampling.cpu_launch import relaunch_on_cpu, requested_cpu_processes

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse_args(argv)
        nprocs = requested_cpu_processes()
        if nprocs > 1:
            return relaunch_on_cpu(nprocs, ["-m", "emdm_train", *argv])
        from .trainer import train

        train(cfg)
    except EMDMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
