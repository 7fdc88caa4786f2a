"""The model contract: what a model family declares to the decoding loop, and the forward-pass protocol.

It lives below both `emdm_models` (the families fill it in) and `emdm_sampling` (the loop reads it), so neither
imports the other for it. A family declares its capabilities once, in a `ModelContract` (`Denoiser.contract`);
the loop reads that declaration instead of probing the model object for attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

import torch

NOISES = ("mask", "uniform")
CACHE_MODES = ("auto", "none", "prefix", "dual", "exact")


@dataclass
class Logits:
    """A pass's logits for the decoding window: `values` [b, end - start, V] hold window columns start:end (the
    columns the pass computed); positions outside it were not computed."""

    values: torch.Tensor
    start: int  # first window column held
    width: int  # window width (all columns)

    def at(self, positions: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """[N, V] logits at the True entries of `positions` [b, width] (which must lie in the held columns), written
        into `out` when given (a reused buffer: on the CPU a fresh [N, V] tensor costs more in page faults than the
        copy itself)."""
        held = positions[:, self.start:self.start + self.values.shape[1]]
        if held.sum() != positions.sum():
            raise RuntimeError("a strategy asked for logits outside the columns this pass computed")
        values = self.values
        b, w, vocab = values.shape
        if out is None or values.stride(2) != 1 or values.stride(1) != vocab or values.stride(0) % vocab:
            return values[held] if out is None else out.copy_(values[held])
        # each position's logits are one contiguous row of the storage (the window is a column slice of the
        # model's [b, L, V] output): gather those rows straight into `out`
        row_stride = values.stride(0) // vocab
        rows = torch.as_strided(values, ((b - 1) * row_stride + w, vocab), (vocab, 1))
        where = held.nonzero()
        return torch.index_select(rows, 0, where[:, 0] * row_stride + where[:, 1], out=out)

    def dense(self) -> torch.Tensor:
        """[b, width, V] with the columns that were not computed set to 0."""
        if self.start == 0 and self.values.shape[1] == self.width:
            return self.values
        out = self.values.new_zeros((self.values.shape[0], self.width, self.values.shape[2]))
        out[:, self.start:self.start + self.values.shape[1]] = self.values
        return out


class Forward(Protocol):
    """The forward passes of one decoding (step 4 of the loop): emdm's `ModelForward`, or a family's own."""

    full_passes: int  # passes over whole sequences (or that re-encoded a prefix)
    partial_passes: int  # cached passes over a window
    full_rows: torch.Tensor  # [b] of the last call: the rows whose pass was a full one

    def __call__(self, rows: torch.Tensor, block_start: torch.Tensor, block_end: torch.Tensor,
                 refresh: torch.Tensor) -> list[tuple[torch.Tensor, Logits]]:
        """Logits for `rows` (indices into the batch): a list of (row positions within `rows`, their `Logits`).
        `block_start` / `block_end` [b] are each row's current block columns, `refresh` [b] the rows that must
        see the whole sequence fresh."""

    def invalidate(self, rows: torch.Tensor | slice, changed: torch.Tensor) -> None:
        """Decided positions that changed again (re-masked, edited): cached keys/values from there are stale."""

    def condition(self, rows: torch.Tensor, scored: torch.Tensor, flat_logits: torch.Tensor) -> None:
        """Self-conditioning families keep this pass's logits for the next pass (others: nothing)."""


@dataclass(frozen=True)
class ModelContract:
    """What a model family declares to the decoding loop (one typed object per loaded model).

    The loop and the config validation read only this (and the denoiser's ids: mask, EOS, pad, maximum length).
    """

    family: str  # the adapter name, for messages
    noise: str = "mask"  # "mask" (masked diffusion) or "uniform" (uniform-state: Duo, DiffusionGemma)
    noise_vocabulary: torch.Tensor | None = None  # uniform-state: [K] ids noise is drawn from (None: all)
    cache_modes: tuple[str, ...] = ("none",)  # the `cache=` modes it runs (besides `auto`)
    cache_note: str = ""  # for a family that caches in its own way: what its cache modes mean (error messages)
    attention_block: int | None = None  # block-causal attention over blocks of this many positions
    canvas_length: int | None = None  # denoises fixed-size canvases of this length (DiffusionGemma)
    infills: bool = True  # whether mask tokens inside a prompt are decoded
    guidance: bool = True  # classifier-free guidance (cfg_scale) is defined for it
    self_conditioning: bool = False  # each pass reads the previous pass's logits over the whole block
    # a pass can also return "shadow" verification logits: for each block position, the prediction of its token
    # with that token hidden (WINO's verification, in the same model call; `verified_logits`)
    verification: bool = False
    surprise_table: bool = False  # the checkpoint has corpus token frequencies (surprise.safetensors)
    # the family's own forward passes (encoder-decoder families): (canvas, config) -> Forward; None: emdm's
    own_forward: Callable[[Any, Any], Forward] | None = None
    sampler_defaults: Mapping[str, Any] = field(default_factory=dict)  # its own decoding, when none is named
    # {sampler: {option: value}} the checkpoint's training implies (a surprise-masked model's order and temperature):
    # the defaults of those options when that sampler decodes it
    trained_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    eot_token_id: int | None = None  # the tokenizer's end-of-turn token (LLaDA's <|eot_id|>), if any

    @property
    def auto_cache(self) -> str:
        """What `cache=auto` means for this model: the exact cache of block-causal models, else none."""
        return "exact" if self.attention_block else "none"

    def describe(self) -> str:
        """A short human description (start-up logs): family, noise, caches."""
        kind = "masked-diffusion" if self.noise == "mask" else "uniform-state"
        extra = f", attention blocks of {self.attention_block}" if self.attention_block else ""
        return f"{self.family} ({kind}; caches {'/'.join(self.cache_modes)}{extra})"
