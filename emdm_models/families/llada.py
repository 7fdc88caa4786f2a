"""LLaDA (GSAI-ML/LLaDA-8B-Base/-Instruct and checkpoints of the same layout) on the Llama backbone.

LLaDA's network is a Llama decoder (RMSNorm, SwiGLU MLP, rotary positions) run without a causal mask. Its
config.json (`model_type: llada`) is converted to a Llama config and its weights (`model.transformer.blocks.N.q_proj`,
`attn_out`, `ff_proj` = gate, `up_proj`, `ff_out` = down, `ln_f`, `wte`, `transformer.ff_out` = the LM head) are
loaded under the Llama names: no remote code. With `include_qkv_bias` (biases on q/k/v only) the Qwen2 stack is
used, which has exactly those biases. The mask id is `config.mask_token_id`, else LLaDA's 126336 (LLaDAConfig's own
default, 50256, is GPT-2's EOS and never LLaDA's mask).
"""

from __future__ import annotations

from typing import Any

from emdm_core.errors import CheckpointError

from ..backbones import DiffusionLlamaConfig, DiffusionQwen2Config
from ..denoiser import register_adapter
from .backbone import BackboneDenoiser

LLADA_MASK_TOKEN_ID = 126336  # LLaDA's <|mdm_mask|>; its tokenizer does not expose it as mask_token_id

# LLaDAConfig's defaults for fields a config.json may leave out (configuration_llada.ModelConfig).
_DEFAULTS = {"d_model": 768, "n_heads": 12, "n_kv_heads": None, "n_layers": 12, "mlp_ratio": 4,
             "mlp_hidden_size": None, "activation_type": "swiglu", "block_type": "sequential", "block_group_size": 1,
             "alibi": False, "rope": False, "multi_query_attention": None, "attention_layer_norm": False,
             "input_emb_norm": False, "layer_norm_type": "default", "layer_norm_with_affine": True,
             "rms_norm_eps": 1e-5, "max_sequence_length": 1024, "rope_theta": 10000.0, "include_qkv_bias": False,
             "include_bias": False, "bias_for_layer_norm": None, "scale_logits": False, "vocab_size": 50257,
             "embedding_size": 50304, "weight_tying": True, "eos_token_id": 50256, "pad_token_id": 50256}
# what the Llama backbone computes; anything else runs through the checkpoint's own code (adapter=remote)
_REQUIRED = {"block_type": "llama", "activation_type": "silu", "rope": True, "alibi": False,
             "layer_norm_type": "rms", "layer_norm_with_affine": True, "attention_layer_norm": False,
             "input_emb_norm": False, "scale_logits": False, "include_bias": False, "block_group_size": 1}


@register_adapter("llada")
class LLaDADenoiser(BackboneDenoiser):
    """LLaDA checkpoints on transformers' Llama (or, with q/k/v biases, Qwen2) decoder layers."""

    foreign_model_types = ("llada",)
    key_mapping = {
        r"^model\.transformer\.ff_out\.": "lm_head.",
        r"^model\.transformer\.wte\.": "model.embed_tokens.",
        r"^model\.transformer\.ln_f\.": "model.norm.",
        r"^model\.transformer\.blocks\.": "model.layers.",
        r"\.attn_norm\.": ".input_layernorm.",
        r"\.ff_norm\.": ".post_attention_layernorm.",
        r"\.attn_out\.": ".self_attn.o_proj.",
        r"\.(q_proj|k_proj|v_proj)\.": r".self_attn.\1.",
        r"\.ff_proj\.": ".mlp.gate_proj.",
        r"\.up_proj\.": ".mlp.up_proj.",
        r"\.ff_out\.": ".mlp.down_proj.",
    }

    @classmethod
    def convert_config(cls, raw: dict[str, Any], path: str) -> Any:
        cfg = {**_DEFAULTS, **raw}
        wrong = {k: cfg.get(k) for k, v in _REQUIRED.items() if cfg.get(k) != v}
        if wrong or "d_model" not in raw:
            what = ", ".join(f"{k}={v!r}" for k, v in wrong.items()) or "no d_model/n_layers fields"
            raise CheckpointError(f"{path}: a LLaDA config emdm cannot map onto its Llama backbone ({what}); pass "
                                  f"adapter=remote trust_remote_code=True to run the checkpoint's own code")
        heads = int(cfg["n_heads"])
        kv_heads = cfg["n_kv_heads"] or (1 if cfg["multi_query_attention"] else heads)
        common = dict(
            vocab_size=int(cfg["embedding_size"] or cfg["vocab_size"]), hidden_size=int(cfg["d_model"]),
            intermediate_size=int(cfg["mlp_hidden_size"] or cfg["mlp_ratio"] * cfg["d_model"]),
            num_hidden_layers=int(cfg["n_layers"]), num_attention_heads=heads, num_key_value_heads=int(kv_heads),
            hidden_act="silu", max_position_embeddings=int(cfg["max_sequence_length"]),
            rms_norm_eps=float(cfg["rms_norm_eps"]),
            rope_parameters={"rope_type": "default", "rope_theta": float(cfg["rope_theta"])},
            tie_word_embeddings=bool(cfg["weight_tying"]), pad_token_id=cfg.get("pad_token_id"),
            eos_token_id=cfg.get("eos_token_id"), bos_token_id=cfg.get("bos_token_id"),
            mask_token_id=int(raw["mask_token_id"]) if raw.get("mask_token_id") is not None else LLADA_MASK_TOKEN_ID,
            diffusion_family="llada", attention="bidirectional")
        if cfg["include_qkv_bias"]:
            return DiffusionQwen2Config(**common, use_sliding_window=False)
        return DiffusionLlamaConfig(**common, attention_bias=False, mlp_bias=False)

    @classmethod
    def default_mask_token_id(cls, config: Any, tokenizer: Any) -> int | None:
        cfg_id = getattr(config, "mask_token_id", None)
        return cfg_id if cfg_id is not None else LLADA_MASK_TOKEN_ID
