"""Diffusion LMs on transformers' own decoder stacks (Llama, Qwen2, Qwen3), as dLLM's A2D models do.

A diffusion backbone is the stock `LlamaModel` / `Qwen2Model` / `Qwen3Model` (its embedding, decoder layers, norm
and rotary embedding, so SDPA, bf16, `device_map` and quantised loading come from transformers) run with a
non-causal mask: padding-only (`attention="bidirectional"`: LLaDA, Dream, A2D) or block-causal
(`attention="block_causal"`: block-diffusion models such as SDAR, where a position sees its own block and every
block before it). The configs add what the diffusion side needs: `mask_token_id`, `logits_shift` (Dream and other
AR-initialised models predict token i at position i-1) and `block_size`.

`DiffusionCache` holds the keys and values of the whole canvas for a batch, per layer. A forward pass over a window
of columns computes fresh keys/values there; per row and position, the cache says which of them replace the cached
ones (`recompute`) and which are written back (`store`). That one mechanism gives Fast-dLLM's prefix and dual caches
(approximate, for bidirectional models) and the exact cache of block-causal models (see emdm_sampling/forward.py).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import (AutoConfig, AutoModelForMaskedLM, LlamaConfig, LlamaModel, LlamaPreTrainedModel,
                          Qwen2Config, Qwen2Model, Qwen2PreTrainedModel, Qwen3Config, Qwen3Model, Qwen3PreTrainedModel)
from transformers.modeling_outputs import MaskedLMOutput

ATTENTION_PATTERNS = ("bidirectional", "block_causal")


class DiffusionConfigMixin:
    """The diffusion fields shared by the backbone configs."""

    def _set_diffusion_fields(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        self.mask_token_id = kwargs.pop("mask_token_id", None)
        self.logits_shift = bool(kwargs.pop("logits_shift", False))
        self.attention = kwargs.pop("attention", "bidirectional")
        self.block_size = kwargs.pop("block_size", None)
        self.diffusion_family = kwargs.pop("diffusion_family", None)
        if self.attention not in ATTENTION_PATTERNS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION_PATTERNS)} (got {self.attention!r})")
        if self.attention == "block_causal" and not self.block_size:
            raise ValueError("a block_causal diffusion model needs block_size")
        kwargs.setdefault("use_cache", False)
        return kwargs


class DiffusionLlamaConfig(DiffusionConfigMixin, LlamaConfig):
    model_type = "emdm_llama"

    def __init__(self, **kwargs: Any):
        super().__init__(**self._set_diffusion_fields(kwargs))


class DiffusionQwen2Config(DiffusionConfigMixin, Qwen2Config):
    model_type = "emdm_qwen2"

    def __init__(self, **kwargs: Any):
        super().__init__(**self._set_diffusion_fields(kwargs))


class DiffusionQwen3Config(DiffusionConfigMixin, Qwen3Config):
    model_type = "emdm_qwen3"

    def __init__(self, **kwargs: Any):
        super().__init__(**self._set_diffusion_fields(kwargs))


# --- masks and cache ---------------------------------------------------------------------------------------------


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, L] position of each column counted from the row's first real token (left padding does not shift)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def diffusion_mask(key_valid: torch.Tensor, query_positions: torch.Tensor, key_positions: torch.Tensor,
                   block_size: int | None) -> torch.Tensor:
    """[B, 1, Q, K] bool: query q may attend to key k (a real token; with `block_size`, in q's block or before)."""
    mask = key_valid.bool()[:, None, None, :].expand(-1, 1, query_positions.shape[1], -1)
    if block_size:
        key_block = torch.div(key_positions, block_size, rounding_mode="floor")[:, None, None, :]
        query_block = torch.div(query_positions, block_size, rounding_mode="floor")[:, None, :, None]
        mask = mask & (key_block <= query_block)
    return mask


class DiffusionCache:
    """Keys and values of a whole canvas, [B, kv heads, L, head dim] per layer, for one `generate` call.

    Before each forward pass, `plan(rows, start, end, recompute, store)` says which batch rows run, which columns
    `start:end` the pass computes, and per row and window position whether the fresh keys/values are used
    (`recompute`, else the cached ones are) and written back (`store`)."""

    def __init__(self, batch: int, length: int):
        self.batch, self.length = batch, length
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self._plan: tuple[Any, int, int, torch.Tensor, torch.Tensor] | None = None

    def plan(self, rows: torch.Tensor | slice, start: int, end: int, recompute: torch.Tensor,
             store: torch.Tensor) -> None:
        self._plan = (rows, start, end, recompute, store)

    def _merge(self, buffers: dict[int, torch.Tensor], layer: int, fresh: torch.Tensor) -> torch.Tensor:
        rows, start, end, recompute, store = self._plan  # type: ignore[misc]
        if layer not in buffers:
            shape = (self.batch, fresh.shape[1], self.length, fresh.shape[3])
            buffers[layer] = torch.zeros(shape, dtype=fresh.dtype, device=fresh.device)
        buf = buffers[layer]
        full = buf[rows]  # advanced indexing copies; a slice (every row) is a view: copy it
        if isinstance(rows, slice):
            full = full.clone()
        use = recompute[:, None, :, None]
        full[:, :, start:end] = torch.where(use, fresh, full[:, :, start:end])
        if bool(store.any()):
            keep = store[:, None, :, None]
            buf[rows, :, start:end] = torch.where(keep, fresh, buf[rows, :, start:end])
        return full

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The transformers cache interface: the keys/values this pass attends to (cached merged with fresh)."""
        return (self._merge(self.keys, layer_idx, key_states), self._merge(self.values, layer_idx, value_states))

    def get_seq_length(self, *args: Any) -> int:
        return self.length


# --- the backbone and the LM ---------------------------------------------------------------------------------


def _to_attention_format(mask: torch.Tensor | None, config: Any, dtype: torch.dtype) -> torch.Tensor | None:
    """A [B, 1, Q, K] bool mask in the form the configured attention implementation reads."""
    if mask is None:
        return None
    if getattr(config, "_attn_implementation", "sdpa") == "eager":
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return mask


class DiffusionBackboneMixin:
    """`forward` of a stock decoder stack with a diffusion mask (and an optional `DiffusionCache`)."""

    def _make_non_causal(self) -> None:
        for layer in self.layers:
            layer.self_attn.is_causal = False

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                cache: DiffusionCache | None = None, diffusion_mask_4d: torch.Tensor | None = None,
                **kwargs: Any) -> Any:
        from transformers.modeling_outputs import BaseModelOutputWithPast

        hidden = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if diffusion_mask_4d is None:
            valid = (torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device) if attention_mask is None
                     else attention_mask.bool())
            if position_ids is None:
                position_ids = positions_from_mask(valid)
            block = self.config.block_size if self.config.attention == "block_causal" else None
            if block or not bool(valid.all()):
                diffusion_mask_4d = diffusion_mask(valid, position_ids, position_ids, block)
        mask = _to_attention_format(diffusion_mask_4d, self.config, hidden.dtype)
        position_embeddings = self.rotary_emb(hidden, position_ids)
        for layer in self.layers[: self.config.num_hidden_layers]:
            hidden = layer(hidden, attention_mask=mask, position_ids=position_ids, cache=cache,
                           position_embeddings=position_embeddings, **kwargs)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden))


class DiffusionLMMixin:
    """A backbone plus the LM head; `logits[:, i]` comes out as the checkpoint computes it (Dream's shift is the
    adapter's business)."""

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, cache: DiffusionCache | None = None,
                diffusion_mask_4d: torch.Tensor | None = None, **kwargs: Any) -> MaskedLMOutput:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            inputs_embeds=inputs_embeds, cache=cache, diffusion_mask_4d=diffusion_mask_4d,
                            **kwargs).last_hidden_state
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                               ignore_index=-100)
        return MaskedLMOutput(loss=loss, logits=logits)


def _lm_class(name: str, pretrained: type, backbone: type, config_class: type) -> type:
    """`XForDiffusion(XPreTrainedModel)` with `model` = the diffusion backbone and an `lm_head`."""

    def __init__(self, config):
        pretrained.__init__(self, config)
        self.model = backbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    attrs = {"__init__": __init__, "config_class": config_class, "__doc__": f"A {name} diffusion LM (emdm).",
             "_tied_weights_keys": {"lm_head.weight": "model.embed_tokens.weight"}}  # tied when the config says so
    return type(f"Diffusion{name}ForMaskedLM", (DiffusionLMMixin, pretrained), attrs)


def _backbone_class(name: str, base: type, config_class: type) -> type:
    def __init__(self, config):
        base.__init__(self, config)
        self._make_non_causal()

    return type(f"Diffusion{name}Model", (DiffusionBackboneMixin, base),
                {"__init__": __init__, "config_class": config_class})


DiffusionLlamaModel = _backbone_class("Llama", LlamaModel, DiffusionLlamaConfig)
DiffusionQwen2Model = _backbone_class("Qwen2", Qwen2Model, DiffusionQwen2Config)
DiffusionQwen3Model = _backbone_class("Qwen3", Qwen3Model, DiffusionQwen3Config)
DiffusionLlamaForMaskedLM = _lm_class("Llama", LlamaPreTrainedModel, DiffusionLlamaModel, DiffusionLlamaConfig)
DiffusionQwen2ForMaskedLM = _lm_class("Qwen2", Qwen2PreTrainedModel, DiffusionQwen2Model, DiffusionQwen2Config)
DiffusionQwen3ForMaskedLM = _lm_class("Qwen3", Qwen3PreTrainedModel, DiffusionQwen3Model, DiffusionQwen3Config)

BACKBONES = {"llama": (DiffusionLlamaConfig, DiffusionLlamaForMaskedLM),
             "qwen2": (DiffusionQwen2Config, DiffusionQwen2ForMaskedLM),
             "qwen3": (DiffusionQwen3Config, DiffusionQwen3ForMaskedLM)}

for _config, _lm in BACKBONES.values():
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModelForMaskedLM.register(_config, _lm, exist_ok=True)
