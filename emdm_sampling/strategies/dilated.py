"""Dilated unmasking (DUS): a fixed coarse-to-fine order of groups of non-adjacent positions per block."""

from __future__ import annotations

import functools
from typing import Any

import torch

from emdm_core.errors import ConfigError

from . import StepContext, StepResult, Strategy, register_sampler


@functools.lru_cache(maxsize=64)
def dilated_levels(length: int, base: int = 2, skip: int = 1) -> tuple[int, ...]:
    """The level (the pass of the block that decodes it) of each of `length` block positions: stride
    length // base^skip first, then the stride divided by base each level, the leftovers last; a last level smaller
    than the one before joins it (DUS's `dilated_unmask_levels` + `merge_last_level`)."""
    if base == 1 or length == 0:
        return (0,) * length
    level = [-1] * length
    stride, current = length // base ** skip, 0
    while stride >= 1:
        fresh = [i for i in range(0, length, stride) if level[i] < 0]
        if fresh:
            for i in fresh:
                level[i] = current
            current += 1
        stride //= base
    leftovers = [i for i in range(length) if level[i] < 0]
    for i in leftovers:
        level[i] = current
    counts = [level.count(v) for v in range(max(level) + 1)]
    if len(counts) >= 2 and counts[-1] < counts[-2]:
        level = [min(v, len(counts) - 2) for v in level]
    return tuple(level)


@register_sampler("dus")
class DilatedUnmasking(Strategy):
    """Dilated Unmasking Scheduler (Luxembourg et al. 2025, arXiv 2506.19037; omerlux/DUS `generate_scheduled`
    with scheduler=dilated): each block is decoded in O(log B) passes, pass j committing the positions of level j
    (`dilated_levels`: far-apart positions first, then the gaps between them), so no two neighbours are decided from
    the same pass early on. With dus_remask=low_confidence a non-final level keeps only the proposals with
    p >= dus_threshold; the others stay masked and the last level decodes them (the reference never revisits them
    and can return [MASK]). Reference setting: block 32, base 2, skip 1, threshold 0.3."""

    options = {"dus_base": 2, "dus_skip": 1, "dus_threshold": 0.3, "dus_remask": "low_confidence"}
    honours = ()

    @classmethod
    def check_options(cls, opt: dict[str, Any]) -> None:
        if int(opt["dus_base"]) < 1 or int(opt["dus_skip"]) < 1:
            raise ConfigError(f"dus_base and dus_skip must be >= 1 (got {opt['dus_base']}, {opt['dus_skip']})")
        if opt["dus_remask"] not in ("low_confidence", "none"):
            raise ConfigError(f"dus_remask must be low_confidence or none (got {opt['dus_remask']!r})")

    def step(self, ctx: StepContext) -> StepResult:
        size = ctx.block.sum(-1)
        index = (ctx.block.long().cumsum(-1) - 1).clamp(min=0)
        level = torch.zeros_like(index)
        last_level = torch.zeros_like(size)
        base, skip = int(self.opt["dus_base"]), int(self.opt["dus_skip"])
        for length in size.unique().tolist():  # a handful of block sizes: the table is per size
            table = torch.tensor(dilated_levels(int(length), base, skip) or (0,), device=index.device)
            rows = size == length
            level[rows] = table[index[rows].clamp(max=len(table) - 1)]
            last_level[rows] = int(table.max())
        last = (ctx.block_step >= last_level).unsqueeze(-1)
        now = ctx.eligible & ((level == ctx.block_step.unsqueeze(-1)) | last)
        if self.opt["dus_remask"] == "low_confidence":
            now = now & (last | (ctx.p_x0 >= float(self.opt["dus_threshold"])))
        return StepResult(reveal=now)
