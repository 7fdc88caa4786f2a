"""Seed derivation, in one place: every seed emdm derives comes from one of these three functions.

- `stable_seed(*parts)`: a 63-bit seed from any JSON-serialisable parts (requests, texts): stable across
  processes, machines and runs, unlike `hash()`.
- `mix_seed(*ints)`: a 63-bit seed from integers (seed, step, stream, rank): cheap, for the training loop.
- `fold_seed(seed)`: any Python int folded into 31 bits, the width of the sampler's counter-based RNG.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

_M31 = 0x7FFFFFFF
_M63 = (1 << 63) - 1
_M64 = (1 << 64) - 1


def stable_seed(*parts: Any) -> int:
    """A 63-bit seed from JSON-serialisable parts (sha256 of their canonical JSON)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") & _M63


def mix_seed(*values: int) -> int:
    """A 63-bit seed from integers (the splitmix64 finaliser over their sequence)."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (int(v) & _M64)) * 0xBF58476D1CE4E5B9 & _M64
        x = (x ^ (x >> 31)) * 0x94D049BB133111EB & _M64
        x ^= x >> 29
    return x & _M63


def fold_seed(seed: int) -> int:
    """Fold an arbitrary Python int into 31 bits (xor of its 31-bit limbs)."""
    seed = int(seed)
    out = 0
    while True:
        out ^= seed & _M31
        seed >>= 31
        if seed in (0, -1):
            return out & _M31
