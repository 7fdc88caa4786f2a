"""Dream (Dream-org/Dream-v0-*-7B and checkpoints of the same layout) on the Qwen2 backbone.

Dream is a Qwen2 decoder run without a causal mask, initialised from an AR model: the prediction for position i
comes out at position i-1 (`logits_shift`; position 0 keeps its own, as Dream's `diffusion_generate` does). Its
weights already carry the Qwen2 names; only the config (`model_type: Dream`) is converted. No remote code, and
position ids always come from the attention mask (Fast-dLLM's copy of Dream overwrites them, shifting RoPE positions
under left padding; the original honours them, as emdm does).
"""

from __future__ import annotations

from typing import Any

from ..backbones import DiffusionQwen2Config
from ..denoiser import register_adapter
from .backbone import BackboneDenoiser

_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
           "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
           "attention_dropout", "pad_token_id", "eos_token_id", "bos_token_id", "mask_token_id",
           "initializer_range")


@register_adapter("dream")
class DreamDenoiser(BackboneDenoiser):
    """Dream checkpoints on transformers' Qwen2 decoder layers (logits shifted back by one position)."""

    foreign_model_types = ("Dream", "dream")

    @classmethod
    def convert_config(cls, raw: dict[str, Any], path: str) -> Any:
        fields = {k: raw[k] for k in _FIELDS if k in raw}
        rope = dict(raw.get("rope_parameters") or {})
        rope.setdefault("rope_type", (raw.get("rope_scaling") or {}).get("rope_type", "default"))
        rope.setdefault("rope_theta", float(raw.get("rope_theta", 10000.0)))
        return DiffusionQwen2Config(**fields, rope_parameters=rope, use_sliding_window=False, logits_shift=True,
                                    diffusion_family="dream", attention="bidirectional")
