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
    def load_model(cls, path: str, config: Any, dtype: torch.dtype, trust_remote_code: bool,
                   **load_kwargs: Any) -> torch.nn.Module:
        from emdm_core.errors import CheckpointError

        model = super().load_model(path, config, dtype, trust_remote_code, **load_kwargs)
        for name, buffer in model.named_buffers():
            # transformers 5 refills non-persistent buffers with uninitialised memory on loading; code that does
            # not recompute its rotary frequencies (Dream's) then computes garbage without an error
            if name.endswith("inv_freq") and not bool(((buffer > 0) & (buffer <= 1)).all()):
                raise CheckpointError(f"{path}: its own model code left {name} uninitialised under this transformers "
                                      f"(its outputs would be garbage); load it without adapter=remote, on emdm's "
                                      f"backbone")
        return model

    @classmethod
    def forward_logits(cls, model: torch.nn.Module, input_ids: torch.Tensor,
                       attention_mask: torch.Tensor) -> torch.Tensor:
        dream = getattr(model.config, "model_type", "").lower() == "dream"
        if dream and not bool(attention_mask.all()):
            # Dream's code takes a [B, 1, L, L] bool mask (a 2-D integer one breaks at batch > 1 and in SDPA)
            valid = attention_mask.bool()
            mask = valid[:, None, :, None] & valid[:, None, None, :]
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits
        else:
            logits = super().forward_logits(model, input_ids, attention_mask)
        if dream:  # position i-1 predicts token i
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits
