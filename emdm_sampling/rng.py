"""Counter-based randomness: a uniform number is a hash of (row seed, step, position, stream).

Every draw depends only on its own row's seed, so a row's output does not change with the batch it is in, the
batch size, the padding, or the device (no shared generator state to consume), and no Python loop over rows is
needed to give each row its own stream.
"""

from __future__ import annotations

import zlib

import torch

from emdm_core.errors import ConfigError
from emdm_core.seeds import fold_seed

__all__ = ["CounterRNG", "STREAMS", "fold_seed", "stream_id"]

_M31 = 0x7FFFFFFF

# The one registry of randomness streams: a draw is keyed by (row seed, step, position, stream), so two uses of
# randomness in one step must ask for different streams. The built-in names keep the ids emdm has always used
# (every seeded result reproduces); any other name gets a stable id from its CRC-32 (`stream_id`), so a new
# strategy names its stream and needs no constant anywhere.
STREAMS: dict[str, int] = {
    "proposal": 0,  # the loop: proposals sampled at temperature > 0
    "order": 1,  # vanilla: the random order
    "surprise": 2,  # surprise: Gumbel top-k over softmax(S / T)
    "remdm_remask": 3,  # remdm: which revealed tokens are re-masked
    "remdm_reveal": 4,  # remdm: which masked tokens are revealed
    "order_noise": 5,  # SamplerConfig.order_noise: Gumbel noise on any ordering score
    "block_noise": 6,  # uniform-state: the noise a block starts from when a row enters it
    "renoise": 7,  # uniform-state: tokens drawn when a strategy renoises positions
    "start_noise": 8,  # uniform-state: the noise every position starts from
    "duo_ancestral": 9,  # duo: the ancestral posterior draw
}
_HASHED_BASE, _HASHED_SPAN = 64, 1 << 12
_hashed: dict[int, str] = {}


def stream_id(name: str | int) -> int:
    """The stream id of `name`: a built-in one (`STREAMS`), or a stable id in [64, 64 + 4096) from the name's
    CRC-32 for any other name (the same in every process); two names that hash alike are refused."""
    if isinstance(name, int):
        return name
    if name in STREAMS:
        return STREAMS[name]
    sid = _HASHED_BASE + zlib.crc32(name.encode()) % _HASHED_SPAN
    holder = _hashed.setdefault(sid, name)
    if holder != name:
        raise ConfigError(f"randomness stream {name!r} has the same id as {holder!r}; give one of them another name")
    return sid


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

    def uniform(self, step: int, stream: str | int) -> torch.Tensor:
        """Uniform numbers in (0, 1), float64, shaped like `positions`, from the named stream (`stream_id`)."""
        stream = stream_id(stream)
        h = _mix(self._base ^ _mix(torch.tensor((step * 8191 + stream * 131071 + 12345) & _M31,
                                                device=self._base.device)))
        h = _mix(h ^ 0x5BD1E995)
        return (h.double() + 0.5) / float(_M31 + 1)

    def gumbel(self, step: int, stream: str | int) -> torch.Tensor:
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
