"""LLaDA- and Dream-style checkpoints through their own model code (`AutoModel`, `trust_remote_code`)."""

from __future__ import annotations

from typing import Any

import torch

from ..denoiser import Denoiser, register_adapter

LLADA_MASK_TOKEN_ID = 126336  # LLaDA's <|mdm_mask|>; its tokenizer does not expose it as mask_token_id


def _architectures(config: Any) -> str:
    return " ".join(getattr(config, "architectures", None) or [])


@register_adapter("llada")
class LLaDADenoiser(Denoiser):
    """LLaDA-style checkpoints: `AutoModel` with remote code; the mask id (126336) is not the tokenizer's."""

    uses_absolute_positions = False
    needs_remote_code = True

    @classmethod
    def matches(cls, config: Any) -> bool:
        return getattr(config, "model_type", "").lower() == "llada" or "LLaDA" in _architectures(config)

    @classmethod
    def auto_class(cls, config: Any) -> Any:
        from transformers import AutoModel

        return AutoModel

    @classmethod
    def default_mask_token_id(cls, config: Any, tokenizer: Any) -> int | None:
        cfg_id = getattr(config, "mask_token_id", None)
        return cfg_id if cfg_id is not None else LLADA_MASK_TOKEN_ID


@register_adapter("dream")
class DreamDenoiser(LLaDADenoiser):
    """Dream-style checkpoints: the prediction for position i comes out at position i-1; undo the shift."""

    @classmethod
    def matches(cls, config: Any) -> bool:
        return getattr(config, "model_type", "").lower() == "dream" or "Dream" in _architectures(config)

    @classmethod
    def default_mask_token_id(cls, config: Any, tokenizer: Any) -> int | None:
        return Denoiser.default_mask_token_id(config, tokenizer)

    @classmethod
    def forward_logits(cls, model: torch.nn.Module, input_ids: torch.Tensor,
                       attention_mask: torch.Tensor) -> torch.Tensor:
        logits = super().forward_logits(model, input_ids, attention_mask)
        return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
