"""SDAR (JetLM/SDAR-*-Chat: block diffusion on a Qwen3 decoder) with a block-causal mask and an exact KV cache.

SDAR decodes `block_size` tokens at a time: a position attends to its own block and every block before it, so the
keys and values of finished blocks never change and caching them is exact. Blocks are aligned to positions counted
from the start of the row (the prompt's last, partial block is decoded together with the first generated tokens),
as SDAR's own `block_diffusion_generate` does. The config (`model_type: sdar`: Qwen3 fields plus `block_size` and
`mask_token_id`) is converted; the weights already carry the Qwen3 names. Logits are not shifted.
"""

from __future__ import annotations

from typing import Any

from emdm_core.errors import CheckpointError

from ..backbones import DiffusionQwen3Config
from ..denoiser import register_adapter
from .backbone import BackboneDenoiser

_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
           "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
           "tie_word_embeddings", "attention_bias", "attention_dropout", "pad_token_id", "eos_token_id",
           "bos_token_id", "mask_token_id", "initializer_range")


@register_adapter("sdar")
class SDARDenoiser(BackboneDenoiser):
    """SDAR checkpoints on transformers' Qwen3 decoder layers with block-causal attention."""

    foreign_model_types = ("sdar",)

    @classmethod
    def convert_config(cls, raw: dict[str, Any], path: str) -> Any:
        if not raw.get("block_size"):
            raise CheckpointError(f"{path}: an SDAR config needs block_size (the attention block); add it to "
                                  f"config.json or pass adapter=remote trust_remote_code=True")
        fields = {k: raw[k] for k in _FIELDS if k in raw}
        rope = {"rope_type": "default", "rope_theta": float(raw.get("rope_theta", 1e6))}
        return DiffusionQwen3Config(**fields, rope_parameters=rope, use_sliding_window=False,
                                    attention="block_causal", block_size=int(raw["block_size"]),
                                    diffusion_family="sdar")
