"""emdm_eval: the lm-evaluation-harness model `emdm` for masked diffusion language models.

`lm_eval --model emdm --model_args pretrained=DIR,sampler=margin,steps=64 --tasks ...` (the `.pth` hook registers
the model), or `python -m emdm_eval ...` / `emdm-eval ...` (no hook needed; adds emdm's own tasks).

This package's `__init__` is imported at interpreter start-up by the `.pth` hook: keep it free of heavy imports.
"""

from __future__ import annotations

from pathlib import Path

# the per-task generation speed `--model emdm` adds to each task's lm-eval results (EMDMLM.task_speed)
SPEED_METRICS = ("forward_passes_per_item", "full_passes_per_item", "cached_passes_per_item", "tokens_per_forward",
                 "generated_tokens", "generation_seconds")

__all__ = ["EMDMLM", "task_paths", "tasks_dir"]


def tasks_dir() -> Path | None:
    """emdm's lm-eval task folder: shipped inside the package in a wheel, else the checkout's `tasks/`."""
    here = Path(__file__).resolve().parent
    for cand in (here / "tasks", here.parent / "tasks"):
        if (cand / "demo").is_dir():
            return cand
    return None


def task_paths(include_path=None) -> list[str]:
    """lm-eval's `include_path` with emdm's task folder first (later paths take precedence: the user's win)."""
    paths = [] if include_path is None else (
        [str(p) for p in include_path] if isinstance(include_path, (list, tuple)) else [str(include_path)])
    ours = tasks_dir()
    if ours is not None and str(ours) not in paths:
        paths = [str(ours), *paths]
    return paths


def __getattr__(name):
    if name == "EMDMLM":
        from .model import EMDMLM

        return EMDMLM
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
