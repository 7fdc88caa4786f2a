"""Any transformers masked LM: BERT, RoBERTa, DistilBERT, ModernBERT and emdm's own architectures."""

from __future__ import annotations

from typing import Any

import torch

from emdm_core.errors import CheckpointError

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
        from ..loading import quiet_transformers

        try:
            with quiet_transformers():  # a mismatch is reported below, in one line
                model, info = cls.auto_class(config).from_pretrained(
                    path, config=config, dtype=dtype, trust_remote_code=trust_remote_code, output_loading_info=True,
                    **load_kwargs)
        except ValueError as exc:
            if "Unrecognized configuration class" in str(exc):
                raise no_mask_head_error(path, config) from None
            raise
        # weights the config declares but the file lacks would run as random layers: refuse (the output head's
        # bias / tied decoder and position ids buffers are rebuilt by transformers and not counted)
        missing = [k for k in info.get("missing_keys", [])
                   if not k.endswith(("position_ids", ".bias", "decoder.weight"))]
        if missing:
            raise CheckpointError(f"{path}: {len(missing)} weights its config declares are not in its weight file "
                                  f"(e.g. {missing[0]}): the config does not match the weights (more layers or a "
                                  f"wider model than saved?); fix config.json or save the checkpoint again")
        return model

    @classmethod
    def build_model(cls, config: Any, trust_remote_code: bool) -> torch.nn.Module:
        try:
            return super().build_model(config, trust_remote_code)
        except ValueError as exc:
            if "Unrecognized configuration class" in str(exc):
                raise no_mask_head_error("the config", config) from None
            raise
