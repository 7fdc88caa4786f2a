"""Verifiable rewards for RL fine-tuning: a registry of checkers, and user functions by import path.

A reward is `fn(completion: str, reference: str, prompt: str) -> float`: the decoded completion (up to its end
token), the training row's response and its prompt. Built in:

| name | reward |
|---|---|
| `exact_match` | 1 when the completion equals the reference, whitespace removed, else 0 |
| `leading_digits` | 1 when the completion's leading run of digits equals the reference's (the addition task's rule) |
| `sudoku_valid` | 1 when the completion is a valid grid that keeps the prompt's clues (any valid solution counts) |
| `digit_format` | the share of the reference's length the completion's leading run of digits covers (a format reward) |
| `gsm8k_answer` | 1 when the last number of the completion equals the reference's answer (after `####`, or its last number) |

`--rl-reward exact_match,digit_format` sums several; `--rl-reward my_pkg.rewards:score` imports a function.
"""

from __future__ import annotations

import importlib
import math
import re
from typing import Callable, Sequence

from emdm_core.registry import Registry

from ..errors import TrainConfigError, TrainError

RewardFn = Callable[[str, str, str], float]
REWARDS: Registry[RewardFn] = Registry("reward", error=TrainConfigError)
_SPACE = re.compile(r"\s+")
_DIGITS = re.compile(r"[0-9]*")


def _strip(text: str) -> str:
    return _SPACE.sub("", text)


@REWARDS.register("exact_match")
def exact_match(completion: str, reference: str, prompt: str) -> float:
    return float(_strip(completion) == _strip(reference))


@REWARDS.register("leading_digits")
def leading_digits(completion: str, reference: str, prompt: str) -> float:
    return float(_DIGITS.match(_strip(completion)).group(0) == _DIGITS.match(_strip(reference)).group(0))


@REWARDS.register("digit_format")
def digit_format(completion: str, reference: str, prompt: str) -> float:
    run, want = len(_DIGITS.match(_strip(completion)).group(0)), len(_strip(reference))
    return min(run, want) / want if want else 1.0


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _last_number(text: str) -> str | None:
    found = _NUMBER.findall(text.split("####")[-1] if "####" in text else text)
    return found[-1].replace(",", "").rstrip(".") if found else None


@REWARDS.register("gsm8k_answer")
def gsm8k_answer(completion: str, reference: str, prompt: str) -> float:
    answer, want = _last_number(completion), _last_number(reference)
    if answer is None or want is None:
        return 0.0
    try:
        return float(abs(float(answer) - float(want)) < 1e-6)
    except ValueError:
        return 0.0


@REWARDS.register("sudoku_valid")
def sudoku_valid(completion: str, reference: str, prompt: str) -> float:
    puzzle, grid = _DIGITS.match(_strip(prompt)).group(0), _DIGITS.match(_strip(completion)).group(0)
    size = {81: 9, 16: 4}.get(len(puzzle))
    if size is None or len(grid) != len(puzzle) or any(p != "0" and p != g for p, g in zip(puzzle, grid)):
        return 0.0
    box = int(size ** 0.5)
    cells = [[r * size + c for c in range(size)] for r in range(size)]
    units = cells + [list(col) for col in zip(*cells)] + [
        [(b // box * box + i // box) * size + b % box * box + i % box for i in range(size)] for b in range(size)]
    digits = set("123456789"[:size])
    return float(all({grid[i] for i in unit} == digits for unit in units))


def resolve_rewards(spec: str) -> list[tuple[str, RewardFn]]:
    """`name[,name...]` of registered rewards or `module:function` import paths -> [(label, function)]; a bad
    entry is a one-line `TrainConfigError`."""
    found = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if ":" in part:
            module, _, attr = part.partition(":")
            try:
                fn = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as exc:
                raise TrainConfigError(f"--rl-reward {part}: cannot import it ({exc}); give module:function of an "
                                       f"importable module, or one of {', '.join(REWARDS.available())}") from None
            if not callable(fn):
                raise TrainConfigError(f"--rl-reward {part} is not a function")
            found.append((part, fn))
        else:
            found.append((part, REWARDS.get(part)))
    if not found:
        raise TrainConfigError(f"--rl-reward is empty; choose from {', '.join(REWARDS.available())} or "
                               f"module:function")
    return found


def score(rewards: Sequence[tuple[str, RewardFn]], completions: Sequence[str], references: Sequence[str],
          prompts: Sequence[str]) -> list[float]:
    """The summed rewards of each completion; a reward that raises or returns a non-number (or NaN) ends the run
    with a one-line error naming the function and the row."""
    totals = []
    for row, (completion, reference, prompt) in enumerate(zip(completions, references, prompts)):
        total = 0.0
        for label, fn in rewards:
            try:
                value = fn(completion, reference, prompt)
            except Exception as exc:  # a user function may raise anything: report it in one line
                raise TrainError(f"reward {label} raised {type(exc).__name__}: {exc} (rollout {row}, completion "
                                 f"{completion[:40]!r})") from None
            if not isinstance(value, (int, float)) or math.isnan(float(value)):
                raise TrainError(f"reward {label} returned {value!r} for rollout {row}; a reward must be a number")
            total += float(value)
        totals.append(total)
    return totals
