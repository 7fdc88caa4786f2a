"""What a decoding returns: sequences, the generated text's ids, forward-pass counts, and optional records."""

from __future__ import annotations

from dataclasses import dataclass

from .record import DecodeRecord
from .trace import Trace


@dataclass
class GenerationOutput:
    """Result of `generate`: full sequences (prompt included, no padding), the generated part, and costs."""

    sequences: list[list[int]]
    generated: list[list[int]]
    nfe: int  # batched forward passes (model calls)
    row_nfe: list[int]  # forward passes each row took part in
    trace: Trace | None = None
    nfe_full: int = 0  # of `nfe`: passes over whole sequences (all of them without a cache)
    nfe_partial: int = 0  # of `nfe`: cached passes over a window (a block, or a block and what follows)
    record: DecodeRecord | None = None  # with `record=True`: every step's decisions and log-probabilities
    row_nfe_full: list[int] | None = None  # of `row_nfe`: the passes each row took part in that were full ones
