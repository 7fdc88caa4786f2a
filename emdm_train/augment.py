"""Batch augmentation: a user function that transforms every training batch afresh (`--augment MODULE:FUNCTION`).

The function takes `(input_ids [b, L] long, prompt_lengths [b] long, generator: torch.Generator)` and returns
new `input_ids` of the same shape and dtype (e.g. a random symmetry of each Sudoku). It runs on the collated
micro-batch before masking, so the masking schedule, the loss and the maskable positions see the transformed
tokens. The generator is seeded by (seed, step, first row of the micro-batch): a run is reproducible and a
resumed run draws the same variants. Held-out evaluation is never augmented.
"""

from __future__ import annotations

import importlib
from typing import Callable

import torch

from emdm_core.errors import first_line

from .errors import TrainConfigError

Augment = Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


def load_augment(spec: str) -> Augment:
    """The function named by `MODULE:FUNCTION`; a one-line error when it cannot be imported or called."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's module, said in one line
        raise TrainConfigError(f"--augment {spec}: cannot import {module_name!r} ({first_line(exc)}); give an "
                               f"importable MODULE:FUNCTION (run from the folder that holds the module)") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise TrainConfigError(f"--augment {spec}: {module_name} has no function {attr!r}")
    return fn


def apply_augment(fn: Augment, spec: str, input_ids: torch.Tensor, prompt_lengths: torch.Tensor,
                  generator: torch.Generator) -> torch.Tensor:
    """`fn` on one micro-batch, its result checked (same shape, integer ids) so that a faulty function fails
    with its name instead of deep inside the loss."""
    out = fn(input_ids.clone(), prompt_lengths, generator)
    if not isinstance(out, torch.Tensor) or out.shape != input_ids.shape or out.dtype.is_floating_point:
        got = f"{type(out).__name__} {tuple(out.shape)} {out.dtype}" if isinstance(out, torch.Tensor) else \
            type(out).__name__
        raise TrainConfigError(f"--augment {spec} must return input_ids of shape {tuple(input_ids.shape)} (integer "
                               f"ids); it returned {got}")
    return out.to(input_ids.dtype)
