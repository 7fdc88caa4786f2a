"""How many masked positions a row reveals at each step of a block: registered schedules."""

from __future__ import annotations

import math
from typing import Callable

import torch

from emdm_core.registry import Registry

# A schedule maps (masked count at block entry m [B], step in block j [B], steps in block S [B]) to the cumulative
# number of positions revealed after j steps, R(j) with R(0) = 0 and R(S) = m.
CumulativeSchedule = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
SCHEDULES: Registry[CumulativeSchedule] = Registry("schedule")
register_schedule = SCHEDULES.register
get_schedule = SCHEDULES.get


def available_schedules() -> list[str]:
    """Names of the registered schedules."""
    return SCHEDULES.available()


@register_schedule("linear")
def linear(m: torch.Tensor, j: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """LLaDA's: m // S per step, the remainder one each to the first steps (a linear alpha schedule)."""
    base, rem = m // s, m % s
    return j * base + torch.minimum(j, rem)


@register_schedule("cosine")
def cosine(m: torch.Tensor, j: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """MaskGIT's: the masked fraction after j of S steps is cos(pi/2 * j/S): few reveals early, many late."""
    frac_masked = torch.cos(math.pi / 2 * j.double() / s.double())
    return torch.where(j >= s, m, m - torch.floor(m.double() * frac_masked).long())


def reveal_counts(schedule: CumulativeSchedule, m: torch.Tensor, j: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Positions to reveal at step j of S for rows whose block held m masks at entry (at least 1 while m > 0)."""
    j = torch.minimum(j, s - 1)
    k = schedule(m, j + 1, s) - schedule(m, j, s)
    # The last step of a block reveals whatever is left (remasking strategies may have added masks).
    return torch.where(j >= s - 1, torch.full_like(m, 2**31 - 1), k).clamp(min=1)
