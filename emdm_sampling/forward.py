"""Step 4 of the loop: the model's logits for a pass, without or with a KV cache (`SamplerConfig.cache`).

- `none`: every pass runs the whole sequence (the rows still decoding).
- `prefix` / `dual` (Fast-dLLM's caches, approximate for bidirectional models): when a row enters a block, one
  full pass refreshes the keys/values of its whole sequence; until the block is done, `prefix` recomputes the
  block and everything after it (attending to the cached prompt and earlier blocks), `dual` only the block
  (attending to the cached rest on both sides).
- `exact` (block-causal models: a position sees only its own block and earlier ones): the keys/values of finished
  blocks are final, so they are computed once (on the pass that enters the next block) and cached; every pass
  recomputes only the current block. The result equals `none` token for token.
- `auto`: `exact` for block-causal models, `none` otherwise.

Everything is per row (rows enter blocks at different passes under threshold decoding): rows that refresh run in
one full pass, the others in one windowed pass whose per-row `recompute` mask keeps each row's own semantics, so a
row decodes the same whatever its batch.
"""

from __future__ import annotations

import torch

from emdm_core.contract import CACHE_MODES, Logits

__all__ = ["CACHE_MODES", "Logits", "ModelForward"]


class ModelForward:
    """The forward passes of one `generate` call (see the module docstring)."""

    def __init__(self, denoiser, canvas, mode: str, cfg_scale: float = 0.0, attention_block: int | None = None,
                 verify: bool = False):
        """`mode`: the cache mode that runs (`DecodePlan.cache`: checked against the model, `auto` resolved);
        `verify`: each pass also computes the block's shadow verification logits (`cache=none` only), kept in
        `verification` as (block_start [b], shadow logits [b, S, V])."""
        self.denoiser, self.canvas, self.mode, self.cfg_scale = denoiser, canvas, mode, cfg_scale
        self.attention_block, self.verify = attention_block, verify
        self.verification: tuple[torch.Tensor, torch.Tensor] | None = None
        # classifier-free guidance: the unconditional input has every prompt token masked (LLaDA's prompt_index)
        self.prompt = canvas.attention & ~canvas.fill
        batch, length = canvas.tokens.shape
        self.cache = denoiser.new_cache(batch, length) if mode != "none" else None
        self.stored_upto = canvas.padding.clone()  # exact: columns before this hold final cached keys/values
        self.full_passes = 0
        self.partial_passes = 0
        self.full_rows = torch.zeros(0, dtype=torch.bool)  # [b] of the last call: the rows that had a full pass

    def __call__(self, rows: torch.Tensor, block_start: torch.Tensor, block_end: torch.Tensor,
                 refresh: torch.Tensor) -> list[tuple[torch.Tensor, Logits]]:
        """Logits for `rows` (indices into the batch) of this pass: a list of (row positions within `rows`,
        their `Logits`). `block_start` / `block_end` [b] are each row's current block columns (canvas columns),
        `refresh` [b] the rows that must see the whole sequence fresh (entering a block, or a strategy that needs
        logits outside the block)."""
        canvas = self.canvas
        self.full_rows = torch.ones_like(refresh) if self.mode == "none" else refresh.clone()
        if self.mode == "none":
            self.full_passes += 1
            tokens, attention = canvas.tokens[rows], canvas.attention[rows]
            if self.verify:
                logits, shadow = self.denoiser.verified_logits(tokens, attention, block_start, block_end)
                self.verification = (block_start, shadow)
            elif self.cfg_scale > 0:
                logits = self.denoiser.guided_logits(tokens, attention, self.prompt[rows], self.cfg_scale)
            else:
                logits = self.denoiser.logits(tokens, attention)
            return [(torch.arange(len(rows), device=rows.device), Logits(canvas.window(logits), 0,
                                                                       logits.shape[1] - canvas.start))]
        if self.mode == "exact":
            return [(torch.arange(len(rows), device=rows.device),
                     self._exact(rows, block_start, block_end, refresh))]
        out = []
        for group in (refresh, ~refresh):
            index = group.nonzero().flatten()
            if len(index):
                out.append((index, self._approximate(rows[index], block_start[index], block_end[index],
                                                     full=group is refresh)))
        return out

    def _columns(self, start: int, end: int, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """[b, end - start] bool: lo[r] <= column < hi[r]."""
        col = torch.arange(start, end, device=lo.device).unsqueeze(0)
        return (col >= lo.unsqueeze(1)) & (col < hi.unsqueeze(1))

    def _approximate(self, rows: torch.Tensor, block_start: torch.Tensor, block_end: torch.Tensor,
                     full: bool) -> Logits:
        canvas, length = self.canvas, self.canvas.tokens.shape[1]
        tokens, attention = canvas.tokens[rows], canvas.attention[rows]
        if full:  # refresh: the whole sequence, every key/value fresh and stored
            start, end = 0, length
            recompute = torch.ones((len(rows), length), dtype=torch.bool, device=tokens.device)
            store = recompute
            self.full_passes += 1
        else:
            hi = torch.full_like(block_end, length) if self.mode == "prefix" else block_end
            start, end = int(block_start.min()), int(hi.max())
            recompute = self._columns(start, end, block_start, hi)
            store = torch.zeros_like(recompute)
            self.partial_passes += 1
        values = self.denoiser.window_logits(tokens, attention, rows, start, end, self.cache, recompute, store)
        return self._in_window(values, start)

    def _exact(self, rows: torch.Tensor, block_start: torch.Tensor, block_end: torch.Tensor,
               refresh: torch.Tensor) -> Logits:
        canvas = self.canvas
        tokens, attention = canvas.tokens[rows], canvas.attention[rows]
        stored = self.stored_upto[rows]
        # a row that needs proposals beyond its block (a Gibbs sweep) computes everything after its cache
        hi = torch.where(refresh, torch.full_like(block_end, canvas.tokens.shape[1]), block_end)
        start, end = int(stored.min()), int(hi.max())
        recompute = self._columns(start, end, stored, hi)
        store = self._columns(start, end, stored, block_start)  # final, not yet cached: the blocks just finished
        values = self.denoiser.window_logits(tokens, attention, rows, start, end, self.cache, recompute, store)
        self.stored_upto[rows] = torch.maximum(stored, block_start)
        self.full_rows = stored < block_start  # the rows whose finished blocks were cached by this pass
        if bool((stored < block_start).any()):
            self.full_passes += 1
        else:
            self.partial_passes += 1
        return self._in_window(values, start)

    def invalidate(self, rows: torch.Tensor | slice, remasked: torch.Tensor) -> None:
        """Positions re-masked after their block was cached are not final any more: recompute from there."""
        if self.mode != "exact" or not bool(remasked.any()):
            return
        col = torch.arange(remasked.shape[1], device=remasked.device) + self.canvas.start
        first = torch.where(remasked, col, torch.full_like(col, self.canvas.tokens.shape[1])).min(1).values
        # the whole attention block of that position changes (positions of a block see each other)
        padding = self.canvas.padding[rows]
        block = self.attention_block
        block_start = padding + torch.div(first - padding, block, rounding_mode="floor") * block
        self.stored_upto[rows] = torch.minimum(self.stored_upto[rows], block_start)

    def condition(self, rows: torch.Tensor, scored: torch.Tensor, flat_logits: torch.Tensor) -> None:
        """No self-conditioning: a pass reads only the tokens."""

    def _in_window(self, values: torch.Tensor, start: int) -> Logits:
        """Columns start:end of the sequence as columns of the decoding window (dropping the prompt before it)."""
        canvas = self.canvas
        width = canvas.tokens.shape[1] - canvas.start
        cut = max(canvas.start - start, 0)
        return Logits(values[:, cut:], max(start - canvas.start, 0), width)
