"""Counter-based randomness: a uniform number is a hash of (row seed, step, position, stream).

Every draw depends only on its own row's seed, so a row's output does not change with the batch it is in, the
batch size, the padding, or the device (no shared generator state to consume), and no Python loop over rows is
needed to give each row its own stream.
"""

from __future__ import annotations

import torch

from emdm_core.seeds import fold_seed

__all__ = ["CounterRNG", "fold_seed"]

_M31 = 0x7FFFFFFF


def _mix(h: torch.Tensor) -> torch.Tensor:
    """Avalanche a 31-bit integer tensor (xor-shift / multiply rounds, kept below 2**62 to stay in int64)."""
    h = (((h >> 15) ^ h) * 0x2C1B3C6D) & _M31
    h = (((h >> 12) ^ h) * 0x297A2D39) & _M31
    h = (((h >> 15) ^ h) * 0x1B873593) & _M31
    return (h >> 16) ^ h


class CounterRNG:
    """Per-row uniform and Gumbel draws keyed by (row seed, step, position, stream)."""

    def __init__(self, seeds: torch.Tensor, positions: torch.Tensor):
        # seeds: [B] int64; positions: [B, L] int64, each row's position counted from its own first real token.
        self._base = _mix(_mix(seeds.long().view(-1, 1) & _M31) ^ (positions.long() & _M31))

    def uniform(self, step: int, stream: int) -> torch.Tensor:
        """Uniform numbers in (0, 1), float64, shaped like `positions`."""
        h = _mix(self._base ^ _mix(torch.tensor((step * 8191 + stream * 131071 + 12345) & _M31,
                                                device=self._base.device)))
        h = _mix(h ^ 0x5BD1E995)
        return (h.double() + 0.5) / float(_M31 + 1)

    def gumbel(self, step: int, stream: int) -> torch.Tensor:
        """Standard Gumbel noise, float64, shaped like `positions`."""
        return -torch.log(-torch.log(self.uniform(step, stream)))

    def rows(self, index: slice | torch.Tensor) -> "CounterRNG":
        """The same generator restricted to some rows (a view, no new draws)."""
        sub = CounterRNG.__new__(CounterRNG)
        sub._base = self._base[index]
        return sub
