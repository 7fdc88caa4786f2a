"""The per-step record of a decode session: what each pass decided, with the model's log-probabilities.

`generate(..., record=True)` returns a `DecodeRecord`: for every pass, the rows that took part, the tokens the model
read, the positions decided (revealed, re-predicted or settled), their tokens and log-probabilities under the
distribution the step read (the model's softmax with the mask token excluded; on a uniform-state canvas the
tempered one), the re-masked positions and the pass's cost (full or cached). RL rollouts read it; the `Trace` is
another consumer of the same steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class StepRecord:
    """One pass, for the rows that took part (`rows` [b]); tensors are [b, W] over the decoding window."""

    step: int
    rows: torch.Tensor  # [b] batch rows of this pass
    tokens_before: torch.Tensor  # [b, W] what the model read
    tokens: torch.Tensor  # [b, W] after the step
    decided: torch.Tensor  # [b, W] bool: positions that took a token this step (revealed, re-predicted, settled)
    remasked: torch.Tensor  # [b, W] bool: decided positions that became noise again
    logprob: torch.Tensor  # [b, W] float32: log p(token) at the decided positions (0 elsewhere)
    full_passes: int  # this step's forward passes over whole sequences
    partial_passes: int  # and cached passes over a window


@dataclass
class RowStep:
    """One row's view of a step: positions counted from the row's first real token."""

    step: int
    positions: list[int]
    tokens: list[int]
    logprobs: list[float]
    remasked: list[int]
    full_pass: bool  # whether the step's pass ran over the whole sequence (no cache used)


@dataclass
class DecodeRecord:
    """Every step of one decode session (see the module docstring)."""

    start: int  # first canvas column of the decoding window
    padding: torch.Tensor  # [B] left padding per row
    initial: torch.Tensor  # [B, W] the window's tokens before the first pass (uniform-state: the start noise)
    steps: list[StepRecord] = field(default_factory=list)

    def add(self, step: StepRecord) -> None:
        self.steps.append(step)

    def for_row(self, row: int) -> list[RowStep]:
        """The steps row `row` took part in, as plain lists (positions counted from the row's first real token)."""
        shift = self.start - int(self.padding[row])
        out = []
        for st in self.steps:
            where = (st.rows == row).nonzero().flatten()
            if not len(where):
                continue
            i = int(where[0])
            decided = st.decided[i].nonzero().flatten()
            out.append(RowStep(st.step, (decided + shift).tolist(), st.tokens[i, decided].tolist(),
                               st.logprob[i, decided].tolist(), (st.remasked[i].nonzero().flatten() + shift).tolist(),
                               st.partial_passes == 0))
        return out

    def total_logprob(self, row: int) -> float:
        """Sum of the log-probabilities of every decision row `row` made: the log-probability of its decoding path
        under the steps' distributions (with re-masking strategies, decisions later undone count too)."""
        return float(sum(sum(s.logprobs) for s in self.for_row(row)))
