"""A record of a decoding run: per step, which positions were revealed or re-masked, with what confidence.

It lets a user replay the decoding (`frames`, the terminal animation in `python -m emdm_sampling --animate`) and
plot the order (`order`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch


@dataclass
class TraceStep:
    """One forward pass: tokens after the update and the positions it changed (row-aligned, unpadded)."""

    step: int
    tokens: list[list[int]]
    revealed: list[list[int]]
    remasked: list[list[int]]
    confidence: list[list[float]]  # p of each revealed token, aligned with `revealed`


@dataclass
class Trace:
    """All steps of one `generate` call, plus the starting tokens."""

    initial: list[list[int]]
    mask_token_id: int
    steps: list[TraceStep] = field(default_factory=list)

    def record(self, step: int, x: torch.Tensor, pad: torch.Tensor, reveal: torch.Tensor, remask: torch.Tensor,
               p_x0: torch.Tensor) -> None:
        """Append a step from whole-batch tensors [B, L] (left-padded; `pad` [B] = padding per row)."""
        x, reveal, remask, p_x0 = x.cpu(), reveal.cpu(), remask.cpu(), p_x0.float().cpu()
        tokens, revealed, remasked, conf = [], [], [], []
        for b, p in enumerate(pad.tolist()):  # bookkeeping for replay only, never on the sampling hot path
            tokens.append(x[b, p:].tolist())
            idx = reveal[b, p:].nonzero().flatten()
            revealed.append(idx.tolist())
            conf.append(p_x0[b, p:][idx].tolist())
            remasked.append(remask[b, p:].nonzero().flatten().tolist())
        self.steps.append(TraceStep(step, tokens, revealed, remasked, conf))

    def order(self, row: int = 0) -> list[int | None]:
        """For each position of `row`, the step at which it was (last) revealed; None if never."""
        out: list[int | None] = [None] * len(self.initial[row])
        for st in self.steps:
            for pos in st.revealed[row]:
                out[pos] = st.step
            for pos in st.remasked[row]:
                out[pos] = None
        return out

    def frames(self, row: int = 0, decode: Callable[[int], str] | None = None, mask: str = "_",
               mark_revealed: bool = False) -> list[str]:
        """The row's text before and after each step, masks shown as `mask`; with `mark_revealed` the tokens a
        step revealed are shown in brackets (the terminal animation of `python -m emdm_sampling --animate`)."""
        decode = decode or str

        def render(tokens: list[int], revealed: set[int]) -> str:
            words = (mask if t == self.mask_token_id else decode(t) for t in tokens)
            return " ".join(f"[{w}]" if i in revealed else w for i, w in enumerate(words))

        return [render(self.initial[row], set())] + [
            render(st.tokens[row], set(st.revealed[row]) if mark_revealed else set()) for st in self.steps]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {"initial": self.initial, "mask_token_id": self.mask_token_id,
                "steps": [vars(s) for s in self.steps]}
