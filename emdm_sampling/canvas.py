"""The canvas being decoded (left-padded rows, which positions to fill) and the per-row block bookkeeping.

`Canvas.build` lays out each row as its prompt followed by `gen_length` masks (or completes it to whole attention
blocks / canvases, as the model contract asks); `BlockState` splits the positions to fill into semi-autoregressive
blocks and tracks, per row, the block being decoded, its step budget and its progress.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from emdm_core.errors import ConfigError, InputTooLongError
from emdm_models.denoiser import Denoiser

from .config import SamplerConfig

FAR = 1 << 40  # block id of positions that are never decoded


@dataclass
class Canvas:
    """The batch being decoded: left-padded tokens and which positions the loop fills.

    `tokens` [B, L] is what the model reads; `window` (columns `start:`) is where anything is decoded (the prompt
    before it is context only), and `window_tokens` is a view into `tokens`, so writing a step's result there is
    what the model sees at the next pass."""

    tokens: torch.Tensor  # [B, L]
    attention: torch.Tensor  # [B, L] bool: real tokens (not padding)
    padding: torch.Tensor  # [B] left padding per row
    prompt_end: torch.Tensor  # [B] column where each row's generation starts
    fill: torch.Tensor  # [B, L] bool: positions to decode (appended masks and masks inside prompts)
    generated: torch.Tensor  # [B, L] bool: the generation region (after the prompt)
    kept_end: torch.Tensor | None = None  # [B] column after the last token returned (extra masks are cut off)
    start: int = 0  # first column of the decoding window

    @classmethod
    def build(cls, rows: list[list[int]], gen_length: int, denoiser: Denoiser,
              complete_block: int | None = None, whole_canvases: int | None = None,
              infill: bool = True) -> "Canvas":
        """Left-padded prompts + `gen_length` masks each; with `complete_block`, more masks until each row ends on a
        block boundary (block-causal models are trained on whole blocks; the extra tokens are cut off again); with
        `whole_canvases`, more until the generation is a whole number of canvases of that length (DiffusionGemma).
        `infill=False`: only the appended positions are decoded (a prompt token equal to the mask id is text)."""
        mask_id, dev = denoiser.mask_token_id, denoiser.device
        lengths = [len(r) + gen_length for r in rows]
        if max(lengths) > denoiser.max_length:
            worst = max(range(len(rows)), key=lambda i: lengths[i])
            raise InputTooLongError(
                f"prompt of {len(rows[worst])} tokens + {gen_length} generated = {lengths[worst]} exceeds the "
                f"model's maximum length {denoiser.max_length}; shorten the prompt or lower gen_length "
                f"(max_gen_toks)")
        extra = [0] * len(rows)
        if complete_block:
            extra = [min((-n) % complete_block, denoiser.max_length - n) for n in lengths]
        elif whole_canvases:
            extra = [min((-gen_length) % whole_canvases, denoiser.max_length - n) for n in lengths]
        batch, width = len(rows), max(n + e for n, e in zip(lengths, extra))
        padding = torch.tensor([width - n - e for n, e in zip(lengths, extra)], device=dev)
        tokens = torch.full((batch, width), denoiser.pad_token_id, dtype=torch.long, device=dev)
        flat = torch.tensor([t for r, e in zip(rows, extra) for t in r + [mask_id] * (gen_length + e)],
                            dtype=torch.long, device=dev)
        col = torch.arange(width, device=dev).unsqueeze(0)
        attention = col >= padding.unsqueeze(1)
        tokens[attention] = flat
        prompt_end = padding + torch.tensor([len(r) for r in rows], device=dev)
        generated = col >= prompt_end.unsqueeze(1)
        fill = (tokens == mask_id) & attention if infill else generated
        canvas = cls(tokens, attention, padding, prompt_end, fill, generated, kept_end=prompt_end + gen_length)
        if fill.any():
            canvas.start = int(fill.any(0).nonzero()[0])
        return canvas

    @property
    def window_tokens(self) -> torch.Tensor:
        return self.tokens[:, self.start:]

    def window(self, t: torch.Tensor) -> torch.Tensor:
        """The decoding window's columns of a [B, L, ...] tensor."""
        return t[:, self.start:]

    def positions(self) -> torch.Tensor:
        """[B, L] position of each column counted from the row's first real token (padding: 0)."""
        col = torch.arange(self.tokens.shape[1], device=self.tokens.device).unsqueeze(0)
        return (col - self.padding.unsqueeze(1)).clamp(min=0)


@dataclass
class BlockState:
    """Semi-autoregressive bookkeeping per row: which block is being decoded, its step budget and progress."""

    block_id: torch.Tensor  # [B, W] block of each fill position (FAR elsewhere)
    n_blocks: torch.Tensor  # [B] blocks of each row
    base_steps: torch.Tensor  # [B] steps every block of the row gets
    extra_steps: torch.Tensor  # [B] the first `extra_steps` blocks get one step more
    current: torch.Tensor  # [B] block being decoded (-1 before the first pass)
    step_in_block: torch.Tensor  # [B] passes done in the current block
    steps_in_block: torch.Tensor  # [B] passes the current block is given
    masked_at_block_entry: torch.Tensor  # [B] masks the current block held when the row entered it

    first_block: torch.Tensor | None = None  # [B] aligned blocks: the position // block_length of block 0
    block_length: int = 0  # aligned blocks: their length

    @classmethod
    def build(cls, fill: torch.Tensor, config: SamplerConfig, positions: torch.Tensor | None = None,
              aligned: int | None = None) -> "BlockState":
        """Blocks of `block_length` masked positions in order; with `aligned` (block-causal models), blocks of
        `block_length` (default `aligned`) positions counted from each row's start (`positions`), as the model's
        attention blocks are."""
        n_fill = fill.sum(1)
        first_block = None
        if aligned:
            block_len = config.block_length or aligned
            raw = torch.div(positions, block_len, rounding_mode="floor")
            first_block = torch.where(fill, raw, torch.full_like(raw, FAR)).min(1).values
            block_id = torch.where(fill, raw - first_block.unsqueeze(1), torch.full_like(raw, FAR))
            n_blocks = (torch.where(fill, block_id, torch.full_like(block_id, -1)).max(1).values + 1).clamp(min=1)
        else:
            rank = fill.long().cumsum(1) - 1
            block_len = config.block_length or int(n_fill.max())
            block_id = torch.where(fill, rank // block_len, torch.full_like(rank, FAR))
            n_blocks = ((n_fill + block_len - 1) // block_len).clamp(min=1)
        if not config.steps_per_block and config.steps < int(n_blocks.max()):  # every block takes a pass
            raise ConfigError(f"steps={config.steps} is fewer than the {int(n_blocks.max())} blocks to decode "
                              f"(gen_length {config.gen_length}, block_length {config.block_length or aligned}); give steps >= "
                              f"{int(n_blocks.max())} or a longer block_length")
        zeros = torch.zeros_like(n_blocks)
        if config.steps_per_block:
            base, extra = torch.full_like(n_blocks, config.steps_per_block), zeros.clone()
        else:  # `steps` is split over a row's blocks; the first `steps % n_blocks` blocks get one step more.
            base, extra = config.steps // n_blocks, config.steps % n_blocks
        return cls(block_id, n_blocks, base, extra,
                   torch.full_like(n_blocks, -1), zeros.clone(), torch.ones_like(n_blocks), zeros.clone(),
                   first_block, block_len if aligned else 0)

    def columns(self, in_block: torch.Tensor, canvas: "Canvas") -> tuple[torch.Tensor, torch.Tensor]:
        """([B] first, [B] one-past-last) sequence column of each row's current block (aligned blocks: the whole
        attention-aligned span, prompt positions included)."""
        start_col = canvas.start
        if self.first_block is not None:
            begin = canvas.padding + (self.current + self.first_block) * self.block_length
            end = (begin + self.block_length).clamp(max=canvas.tokens.shape[1])
            return begin, end
        col = torch.arange(in_block.shape[1], device=in_block.device).unsqueeze(0) + start_col
        width = canvas.tokens.shape[1]
        begin = torch.where(in_block, col, torch.full_like(col, width)).min(1).values
        end = torch.where(in_block, col + 1, torch.zeros_like(col)).max(1).values
        return begin, end

    def advance(self, masked: torch.Tensor) -> torch.Tensor:
        """Move each row to the block of its first masked position; return [B, W] bool: that block's positions."""
        current = torch.where(masked, self.block_id, torch.full_like(self.block_id, FAR)).min(1).values
        entering = current != self.current
        in_block = self.block_id == current.unsqueeze(1)
        self.masked_at_block_entry = torch.where(entering, (masked & in_block).sum(1), self.masked_at_block_entry)
        self.step_in_block = torch.where(entering, torch.zeros_like(self.step_in_block), self.step_in_block)
        budget = (self.base_steps + (current < self.extra_steps).long()).clamp(min=1)
        self.steps_in_block = torch.where(entering, budget, self.steps_in_block)
        self.current = current
        return in_block
