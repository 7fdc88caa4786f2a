"""Any transformers masked LM: BERT, RoBERTa, DistilBERT, ModernBERT and emdm's own architectures."""

from __future__ import annotations

from typing import Any

import torch

from ..denoiser import Denoiser, no_mask_head_error, register_adapter


@register_adapter("masked_lm")
class MaskedLMDenoiser(Denoiser):
    """`AutoModelForMaskedLM` checkpoints; the mask id is the tokenizer's."""

    @classmethod
    def matches(cls, config: Any) -> bool:
        return True

    @classmethod
    def load_model(cls, path: str, config: Any, dtype: torch.dtype, trust_remote_code: bool,
                   **load_kwargs: Any) -> torch.nn.Module:
        try:
            return super().load_model(path, config, dtype, trust_remote_code, **load_kwargs)
        except ValueError as exc:
            if "Unrecognized configuration class" in str(exc):
                raise no_mask_head_error(path, config) from None
            raise

    @classmethod
    def build_model(cls, config: Any, trust_remote_code: bool) -> torch.nn.Module:
        try:
            return super().build_model(config, trust_remote_code)
        except ValueError as exc:
            if "Unrecognized configuration class" in str(exc):
                raise no_mask_head_error("the config", config) from None
            raise
