"""How many masked positions a row reveals at each step of a block: registered schedules."""

from __future__ import annotations

import math
from typing import Callable

import torch

from emdm_core.registry import Registry

# A schedule maps (masked count at block entry m [B], step in block j [B], steps in block S [B]) to the cumulative
# number of positions revealed after j steps, R(j) with R(0) = 0 and R(S) = m. A schedule marked `per_step`
# instead maps (masks left in the block now [B], j, S) to the positions to reveal at step j, which may be 0.
CumulativeSchedule = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
DREAM_EPS = 1e-3  # Dream's `eps`: the last timestep of linspace(1, eps, steps + 1)
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


@register_schedule("dream")
def dream(remaining: torch.Tensor, j: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Dream's `diffusion_generate`: on timesteps t = linspace(1, eps, S + 1), step j reveals
    int(n * (1 - t[j+1] / t[j])) of the n positions still masked (float32 arithmetic, as Dream's), so some steps
    reveal none; the last step reveals the rest."""
    out = torch.zeros_like(remaining)
    for steps in torch.unique(s).tolist():
        rows = s == steps
        t = torch.linspace(1, DREAM_EPS, int(steps) + 1, device=remaining.device)
        ratio = 1 - t[1:] / t[:-1]  # [S] float32, as Dream computes it step by step
        step = j[rows].clamp(max=int(steps) - 1)
        out[rows] = (remaining[rows].float() * ratio[step]).long()
    return out


dream.per_step = True  # type: ignore[attr-defined]


def reveal_counts(schedule: CumulativeSchedule, m: torch.Tensor, j: torch.Tensor, s: torch.Tensor,
                  remaining: torch.Tensor | None = None) -> torch.Tensor:
    """Positions to reveal at step j of S for rows whose block held m masks at entry (at least 1 while m > 0);
    a `per_step` schedule reads the masks left now (`remaining`) and may reveal none at a step."""
    j = torch.minimum(j, s - 1)
    if getattr(schedule, "per_step", False):
        k = schedule(m if remaining is None else remaining, j, s)
        return torch.where(j >= s - 1, torch.full_like(m, 2**31 - 1), k)
    k = schedule(m, j + 1, s) - schedule(m, j, s)
    # The last step of a block reveals whatever is left (remasking strategies may have added masks).
    return torch.where(j >= s - 1, torch.full_like(m, 2**31 - 1), k).clamp(min=1)
