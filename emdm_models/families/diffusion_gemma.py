"""DiffusionGemma (google/diffusiongemma-*): transformers' `DiffusionGemmaForBlockDiffusion`, a uniform-state block
diffusion model with an encoder and a decoder.

The encoder reads the decided text (the prompt, then each finished canvas) causally into a KV cache; the decoder
denoises one canvas of `canvas_length` tokens at a time, attending bidirectionally to that cache and to the canvas,
and reads the previous step's logits as self-conditioning. A canvas starts from uniformly random tokens (no mask
token: the model has none). emdm runs the stock transformers classes (no remote code) and drives them from its one
loop: the canvas is a block of the loop, `CanvasForward` below runs the passes, the noise is uniform.

Likelihood: the model defines no tractable likelihood of a continuation (its training objective is a denoising
loss over canvases; the encoder is a context reader, not a language-model head), so emdm does not estimate one:
`loglikelihood` requests fail with a one-line error; generation tasks work.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from emdm_core.contract import Logits, ModelContract
from emdm_core.errors import ConfigError

from ..denoiser import Denoiser, register_adapter


@register_adapter("diffusion_gemma")
class DiffusionGemmaDenoiser(Denoiser):
    """DiffusionGemma checkpoints on transformers' own classes, decoded canvas by canvas."""

    noise = "uniform"
    training_problem = ("emdm_train does not train DiffusionGemma (an encoder-decoder trained on its own canvas "
                        "denoising loss, which emdm does not implement); fine-tune a masked-diffusion model, or a Duo "
                        "model with --noise uniform")
    # a class attribute in place of the base class's property
    likelihood_problem = ("DiffusionGemma defines no tractable likelihood of a continuation (a uniform-state "
                          "encoder-decoder trained on a canvas denoising loss); generation tasks (generate_until) "
                          "work, loglikelihood tasks do not")

    def sampler_defaults(self) -> dict[str, Any]:
        """`model.generate`'s decoding: the checkpoint's generation_config.json over DiffusionGemma's defaults
        (entropy bound 0.1, temperature 0.8 -> 0.4, 48 steps per canvas, stable for 1 step and mean entropy
        < 0.005 to stop early; no canvas after the one that holds EOS, as its EOS criterion)."""
        from transformers.models.diffusion_gemma.generation_diffusion_gemma import DiffusionGemmaGenerationConfig

        defaults = DiffusionGemmaGenerationConfig._get_default_generation_params()
        given = getattr(self.model, "generation_config", None)
        value = {k: getattr(given, k, None) for k in defaults}
        value = {k: (v if v is not None else defaults[k]) for k, v in value.items()}
        return {"sampler": "entropy_bound", "stop_at_eos": True,  # no canvas after the one holding EOS
                "steps_per_block": int(value["max_denoising_steps"]),
                "temperature": float(value["t_max"]), "temperature_end": float(value["t_min"]),
                "entropy_bound": float(value["sampler_config"].entropy_bound),
                "stability_threshold": int(value["stability_threshold"]),
                "confidence_threshold": float(value["confidence_threshold"])}

    @classmethod
    def matches(cls, config: Any) -> bool:
        return getattr(config, "model_type", None) == "diffusion_gemma"

    @classmethod
    def auto_class(cls, config: Any) -> Any:
        from transformers import DiffusionGemmaForBlockDiffusion

        return DiffusionGemmaForBlockDiffusion

    @classmethod
    def build_model(cls, config: Any, trust_remote_code: bool) -> torch.nn.Module:
        return cls.auto_class(config)(config)

    @classmethod
    def default_mask_token_id(cls, config: Any, tokenizer: Any) -> int | None:
        # no mask token: the id only marks canvas positions before their noise is drawn (never read by the model)
        pad = getattr(config.get_text_config(), "pad_token_id", None)
        return 0 if pad is None else int(pad)

    @property
    def canvas_length(self) -> int:
        return int(self.model.config.canvas_length)

    @property
    def contract(self) -> ModelContract:
        """Canvases = blocks, its own encoder-decoder passes with self-conditioning; `cache=auto` reuses the
        encoder's prefix cache (exact), `cache=none` re-encodes; no mask token (no infilling, no guidance)."""
        return dataclasses.replace(super().contract, canvas_length=self.canvas_length, infills=False,
                                   guidance=False, self_conditioning=True, cache_modes=("none",),
                                   cache_note="DiffusionGemma caches its encoder's prefix itself (exact): use "
                                              "cache=auto, or cache=none to re-encode every pass",
                                   own_forward=lambda canvas, config: CanvasForward(self, canvas, config))

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.get_text_config().vocab_size)

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        raise ConfigError(f"{self.likelihood_problem}; DiffusionGemma has no single-pass logits over a sequence")


@dataclass
class _Prefix:
    """An encoder KV cache over columns [0, end) of some rows."""

    rows: torch.Tensor  # [b] batch rows, in the cache's order
    cache: Any


class CanvasForward:
    """Step 4 of the loop for DiffusionGemma: per pass, the decoder over each row's current canvas.

    Rows are grouped by the column where their canvas starts (rows of one batch move canvas by canvas, so usually
    one group). The encoder cache of a group's prefix is built once per canvas: extended from the previous canvas's
    cache with the canvas just decided (as `generate` does), reused for every pass within the canvas.
    `cache=none` re-encodes the prefix on every pass instead (the same logits, slower). Self-conditioning: the
    loop hands each pass's (tempered) logits back through `condition`; the next pass of the same canvas reads them,
    a canvas's first pass reads none."""

    def __init__(self, denoiser: DiffusionGemmaDenoiser, canvas: Any, config: Any):
        self.denoiser, self.canvas, self.model = denoiser, canvas, denoiser.model
        self.reuse = config.cache == "auto"
        self.length = denoiser.canvas_length
        batch = canvas.tokens.shape[0]
        self.positions = canvas.positions()
        self.prefixes: dict[int, _Prefix] = {}  # canvas start column -> the encoder cache of the columns before it
        self.canvas_start = torch.full((batch,), -1, dtype=torch.long, device=canvas.tokens.device)
        self.conditioned = torch.zeros(batch, dtype=torch.bool, device=canvas.tokens.device)
        self.self_conditioning: torch.Tensor | None = None  # [B, C, V] the last pass's logits, per row
        self.full_passes = 0  # passes that (re-)encoded a prefix
        self.partial_passes = 0  # decoder passes on a cached prefix

    def __call__(self, rows: torch.Tensor, block_start: torch.Tensor, block_end: torch.Tensor,
                 refresh: torch.Tensor) -> list[tuple[torch.Tensor, Logits]]:
        if bool(((block_end - block_start) != self.length).any()):
            raise RuntimeError("DiffusionGemma decodes whole canvases; the loop gave a partial block")
        moved = self.canvas_start[rows] != block_start  # a row's first pass on a canvas: no self-conditioning yet
        self.conditioned[rows[moved]] = False
        self.canvas_start[rows] = block_start
        width = self.canvas.tokens.shape[1] - self.canvas.start
        starts = set(block_start.tolist())
        self.full_rows = torch.zeros_like(refresh)
        out = []
        for start in sorted(starts):
            index = (block_start == start).nonzero().flatten()
            group = rows[index]
            cache, encoded = self._prefix(group, start)
            logits = self._decode(group, start, cache)
            self.full_rows[index] = encoded
            if encoded:
                self.full_passes += 1
            else:
                self.partial_passes += 1
            out.append((index, Logits(logits, start - self.canvas.start, width)))
        self.prefixes = {k: v for k, v in self.prefixes.items() if k in starts}
        return out

    # -- the encoder's prefix cache ---------------------------------------------------------------------------
    def _prefix(self, rows: torch.Tensor, end: int) -> tuple[Any, bool]:
        """(cache over columns [0, end) of `rows`, whether the encoder ran for it)."""
        held = self.prefixes.get(end) if self.reuse else None
        if held is not None and _contains(held.rows, rows):
            if not torch.equal(held.rows, rows):
                held = _Prefix(rows, _select(held, rows))
                self.prefixes[end] = held
            return held.cache, False
        before = self.prefixes.get(end - self.length) if self.reuse else None
        if before is not None and _contains(before.rows, rows):
            cache, begin = _select(before, rows), end - self.length
        else:
            from transformers import DynamicCache

            cache, begin = DynamicCache(config=self.model.config.get_text_config(decoder=True)), 0
        canvas = self.canvas
        self.model.model.encoder(input_ids=canvas.tokens[rows, begin:end],
                                 attention_mask=canvas.attention[rows, :end].long(),
                                 position_ids=self.positions[rows, begin:end], cache=cache)
        self.prefixes[end] = _Prefix(rows, cache)
        return cache, True

    # -- the decoder over the canvas ----------------------------------------------------------------------------
    def _decode(self, rows: torch.Tensor, start: int, cache: Any) -> torch.Tensor:
        canvas, end = self.canvas, start + self.length
        attention = torch.cat([canvas.attention[rows, :start], torch.ones_like(canvas.attention[rows, start:end])], 1)
        conditioned = self.conditioned[rows]
        signal, signal_mask = None, None
        if self.self_conditioning is not None and bool(conditioned.any()):
            signal = self.self_conditioning[rows]
            signal_mask = None if bool(conditioned.all()) else conditioned
        self.denoiser.forward_calls += 1
        out = self.model(decoder_input_ids=canvas.tokens[rows, start:end], cache=cache,
                         self_conditioning_logits=signal, self_conditioning_mask=signal_mask,
                         decoder_attention_mask=attention.long(), decoder_position_ids=self.positions[rows, start:end])
        return out.logits.float()

    def condition(self, rows: torch.Tensor, scored: torch.Tensor, flat_logits: torch.Tensor) -> None:
        """Keep this pass's logits (tempered, as the loop's statistics read them) for the next pass's
        self-conditioning: `scored` [b, W] are the positions of `flat_logits` [N, V] (row-major)."""
        if self.self_conditioning is None:
            dtype = self.model.model.decoder.embed_tokens.weight.dtype
            self.self_conditioning = flat_logits.new_zeros((self.canvas.tokens.shape[0], self.length,
                                                            flat_logits.shape[-1]), dtype=dtype)
        row, column = scored.nonzero(as_tuple=True)
        batch_rows = rows[row]
        offset = column + self.canvas.start - self.canvas_start[batch_rows]
        self.self_conditioning[batch_rows, offset] = flat_logits.to(self.self_conditioning.dtype)
        self.conditioned[rows] = True

    def invalidate(self, rows: torch.Tensor | slice, changed: torch.Tensor) -> None:
        """Nothing cached depends on the canvas being decoded."""


def _contains(held: torch.Tensor, rows: torch.Tensor) -> bool:
    return bool(torch.isin(rows, held).all())


def _select(prefix: _Prefix, rows: torch.Tensor) -> Any:
    """A new cache of `rows` (all held by `prefix`), leaving `prefix.cache` as it is: the layers are copied
    shallowly (extending a cache replaces its tensors, it never writes into them), and their tensors are indexed
    only when the rows differ from the held ones (in lockstep decoding they do not: no copy of the keys/values)."""
    out = copy.copy(prefix.cache)
    out.layers = [copy.copy(layer) for layer in prefix.cache.layers]
    if not torch.equal(prefix.rows, rows):
        out.batch_select_indices((prefix.rows.unsqueeze(0) == rows.unsqueeze(1)).long().argmax(1))
    return out
