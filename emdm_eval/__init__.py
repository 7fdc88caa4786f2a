"""emdm_eval: the lm-evaluation-harness model `emdm` for masked diffusion language models.

`lm_eval --model emdm --model_args pretrained=DIR,sampler=margin,steps=64 --tasks ...` (the `.pth` hook registers
the model), or `python -m emdm_eval ...` / `emdm-eval ...` (no hook needed; adds emdm's own tasks).

This package's `__init__` is imported at interpreter start-up by the `.pth` hook: keep it free of heavy imports.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["EMDMLM", "tasks_dir"]


def tasks_dir() -> Path | None:
    """emdm's lm-eval task folder: shipped inside the package in a wheel, else the checkout's `tasks/`."""
    here = Path(__file__).resolve().parent
    for cand in (here / "tasks", here.parent / "tasks"):
        if (cand / "demo").is_dir():
            return cand
    return None


def __getattr__(name):
    if name == "EMDMLM":
        from .model import EMDMLM

        return EMDMLM
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
