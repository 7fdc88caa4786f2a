"""`python -m emdm_eval ...` / `emdm-eval ...`: the lm-eval CLI with `--model emdm` registered and emdm's tasks.

Takes exactly lm-eval's arguments (`emdm-eval --model emdm --model_args pretrained=DIR --tasks emdm_demo`). It
needs no `.pth` hook: it registers the model itself, adds emdm's `tasks/` folder to the task search path (next to
any `--include_path` you give), checks `--model_args` before lm-eval spends a minute indexing its tasks, and prints
emdm's own errors as one line (`error: ...`, exit status 2).
Also works under `accelerate launch [--cpu] --num_processes N -m emdm_eval ...`.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence


def _add_task_dir() -> None:
    """Make lm-eval's TaskManager also search emdm's tasks folder (the user's --include_path takes precedence)."""
    import lm_eval.tasks as lm_tasks

    from . import task_paths

    base = lm_tasks.TaskManager
    if getattr(base, "_emdm_tasks", False):
        return

    class TaskManager(base):  # type: ignore[misc, valid-type]
        _emdm_tasks = True

        def __init__(self, *args, include_path=None, **kwargs):
            super().__init__(*args, include_path=task_paths(include_path) or None, **kwargs)

    TaskManager.__name__ = TaskManager.__qualname__ = base.__name__
    lm_tasks.TaskManager = TaskManager


def _flag(argv: Sequence[str], name: str) -> str | None:
    """The value of `--name X` / `--name=X` in argv (the last one), or None."""
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def check_model_args(argv: Sequence[str]) -> None:
    """For `--model emdm`: type and check `--model_args` and read the checkpoint's config now, so that a typo fails
    in a second instead of after lm-eval has indexed its tasks."""
    if _flag(argv, "--model") != "emdm":
        return
    from lm_eval.utils import simple_parse_args_string

    from emdm_models.loading import peft_base, read_config

    from .model import parse_model_args

    args, _sampler_kwargs = parse_model_args(simple_parse_args_string(_flag(argv, "--model_args") or ""))
    check_output_path(_flag(argv, "--output_path"))
    pretrained = peft_base(str(args.pretrained)) or str(args.pretrained)  # a LoRA output: its base's config
    read_config(pretrained, args.trust_remote_code or "--trust_remote_code" in argv)


def check_output_path(path: str | None) -> None:
    """A `--output_path` results cannot be written to is an error now, not a warning after the evaluation."""
    from emdm_core.errors import ConfigError
    from emdm_core.paths import output_problem

    problem = output_problem(path) if path else None
    if problem:
        raise ConfigError(f"--output_path {path}: {problem}; choose a folder you can write to")


def emdm_help() -> str:
    """The emdm part of `emdm-eval --help`: the model arguments, the sampler arguments (one source: the typed
    configs' fields and help), the registered samplers and the bundled tasks."""
    import glob

    from emdm_core import typed
    from emdm_sampling import SamplerConfig, available_samplers

    from . import tasks_dir
    from .model import EMDMArgs

    def rows(cls: type, skip: tuple[str, ...] = ()) -> list[str]:
        return [f"  {f.name:<24} {f.metadata['help']} (default: {f.default})" for f in typed.fields(cls)
                if f.name not in skip]

    folder = tasks_dir() or "."
    names = {os.path.splitext(os.path.basename(p))[0] for p in glob.glob(str(folder / "**" / "*.yaml"), recursive=True)}
    tasks = sorted(n for n in names if not n.startswith("_"))  # _name.yaml: templates other tasks include
    return "\n".join(["--model emdm: --model_args k=v,... (model arguments)", *rows(EMDMArgs), "",
                      "sampler arguments (also in --gen_kwargs; each strategy's own options too, e.g. eta=0.1)",
                      *rows(SamplerConfig, SamplerConfig.PER_REQUEST), "",
                      f"samplers: {', '.join(available_samplers())}",
                      f"emdm's tasks (found without --include_path): {', '.join(tasks) or 'none'}", "",
                      "lm-eval's own arguments follow.", ""])


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(emdm_help())
    from emdm_core.launch import relaunch_on_cpu, requested_cpu_processes

    nprocs = requested_cpu_processes()
    if nprocs > 1:  # `accelerate launch --cpu --num_processes N -m emdm_eval`: accelerate started one process
        return relaunch_on_cpu(nprocs, ["-m", "emdm_eval", *argv])
    from .registration import register

    check_model_args(argv)
    register()
    _add_task_dir()
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval", *argv]
    cli_evaluate()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from emdm_core.cli import run_cli

    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
