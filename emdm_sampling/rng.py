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


class TorchRowGenerators:
    """One `torch.Generator` per row, seeded with the row's seed (`SamplerConfig.rng = "torch"`).

    A compatibility path for reproducing a reference implementation that draws from torch's global generator
    (transformers' DiffusionGemma `generate`: `torch.randint` canvases and renoising, `torch.multinomial`
    proposals): a row's draws follow that order, so after `torch.manual_seed(seed)` the reference run on that one
    prompt and emdm's row with seed `seed` see the same numbers. Each row keeps its own generator, so its draws
    still do not depend on the batch; the counter-based `CounterRNG` stays the default (it needs no per-row loop).
    """

    def __init__(self, seeds: list[int], device: torch.device | str = "cpu"):
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

    def _rows(self, rows: torch.Tensor | slice, count: int) -> list[int]:
        return list(range(count)) if isinstance(rows, slice) else [int(r) for r in rows.tolist()]

    def randint(self, rows: torch.Tensor | slice, positions: torch.Tensor, high: int,
                vocabulary: torch.Tensor) -> torch.Tensor:
        """[b, W]: at each row's `positions` (column order) `vocabulary[randint(0, high, (1, n))]`."""
        out = torch.zeros(positions.shape, dtype=torch.long, device=positions.device)
        for i, row in enumerate(self._rows(rows, positions.shape[0])):
            n = int(positions[i].sum())
            if n:
                draw = torch.randint(0, high, (1, n), generator=self.generators[row], device=positions.device)
                out[i, positions[i]] = vocabulary[draw[0]]
        return out

    def multinomial(self, rows: torch.Tensor | slice, positions: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """[N] one draw per row of `probs` [N, V] (the True entries of `positions` [b, W], row-major), each
        emdm row's positions drawn together from its generator."""
        counts = positions.sum(1).tolist()
        out = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
        first = 0
        for n, row in zip(counts, self._rows(rows, positions.shape[0])):
            if n:
                out[first:first + n] = torch.multinomial(probs[first:first + n], 1,
                                                         generator=self.generators[row]).squeeze(-1)
            first += n
        return out
