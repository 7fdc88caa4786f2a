"""Checkpoints through their own model code (`trust_remote_code=True`, `adapter=remote`): families emdm does not
map onto a backbone. The network is `AutoModel` (or `AutoModelForMaskedLM` when the code registers one); Dream-style
checkpoints (`model_type` Dream) get their one-position logit shift undone; LLaDA-style ones default to mask id
126336."""

from __future__ import annotations

from typing import Any

import torch

from ..denoiser import Denoiser, register_adapter
from .llada import LLADA_MASK_TOKEN_ID


@register_adapter("remote")
class RemoteDenoiser(Denoiser):
    """The checkpoint's own model code; no KV cache."""

    uses_absolute_positions = False
    needs_remote_code = True

    @classmethod
    def matches(cls, config: Any) -> bool:
        """Remote code that registers only `AutoModel` (no masked-LM head class): LLaDA/Dream-style models."""
        auto_map = getattr(config, "auto_map", None) or {}
        return "AutoModel" in auto_map and "AutoModelForMaskedLM" not in auto_map

    @classmethod
    def auto_class(cls, config: Any) -> Any:
        from transformers import AutoModel, AutoModelForMaskedLM

        auto_map = getattr(config, "auto_map", None) or {}
        return AutoModelForMaskedLM if "AutoModelForMaskedLM" in auto_map else AutoModel

    @classmethod
    def default_mask_token_id(cls, config: Any, tokenizer: Any) -> int | None:
        if getattr(config, "model_type", "").lower() == "llada":
            cfg_id = getattr(config, "mask_token_id", None)
            return cfg_id if cfg_id is not None else LLADA_MASK_TOKEN_ID
        return Denoiser.default_mask_token_id(config, tokenizer)

    @classmethod
    def forward_logits(cls, model: torch.nn.Module, input_ids: torch.Tensor,
                       attention_mask: torch.Tensor) -> torch.Tensor:
        logits = super().forward_logits(model, input_ids, attention_mask)
        if getattr(model.config, "model_type", "").lower() == "dream":  # position i-1 predicts token i
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits
