"""`python -m emdm_eval ...` / `emdm-eval ...`: the lm-eval CLI with `--model emdm` registered and emdm's tasks.

Takes exactly lm-eval's arguments (`emdm-eval --model emdm --model_args pretrained=DIR --tasks emdm_demo`). It
needs no `.pth` hook: it registers the model itself, adds emdm's `tasks/` folder to the task search path (next to
any `--include_path` you give), and prints emdm's own errors as one line (`error: ...`, exit status 2).
Also works under `accelerate launch [--cpu] --num_processes N -m emdm_eval ...`.
"""

from __future__ import annotations

import os
import sys


def _add_task_dir() -> None:
    """Make lm-eval's TaskManager also search emdm's tasks folder."""
    from . import tasks_dir

    ours = tasks_dir()
    if ours is None:
        return
    import lm_eval.tasks as lm_tasks

    base = lm_tasks.TaskManager
    if getattr(base, "_emdm_tasks", False):
        return

    class TaskManager(base):  # type: ignore[misc, valid-type]
        _emdm_tasks = True

        def __init__(self, *args, include_path=None, **kwargs):
            paths = [] if include_path is None else (
                list(include_path) if isinstance(include_path, (list, tuple)) else [include_path])
            if str(ours) not in [str(p) for p in paths]:
                paths = [str(ours), *paths]  # later paths take precedence: the user's override ours
            super().__init__(*args, include_path=paths, **kwargs)

    TaskManager.__name__ = TaskManager.__qualname__ = base.__name__
    lm_tasks.TaskManager = TaskManager


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from emdm_sampling.cpu_launch import relaunch_on_cpu, requested_cpu_processes

    nprocs = requested_cpu_processes()
    if nprocs > 1:  # `accelerate launch --cpu --num_processes N -m emdm_eval`: accelerate started one process
        return relaunch_on_cpu(nprocs, ["-m", "emdm_eval", *argv])
    from emdm_sampling.errors import EMDMError

    from .registration import register

    try:
        register()
        _add_task_dir()
        from lm_eval.__main__ import cli_evaluate

        sys.argv = ["lm_eval", *argv]
        cli_evaluate()
    except EMDMError as exc:
        if os.environ.get("EMDM_TRACEBACK"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
