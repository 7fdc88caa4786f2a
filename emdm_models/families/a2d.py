"""AR-to-diffusion checkpoints: a Llama / Qwen2 / Qwen3 model adapted into a bidirectional masked diffusion LM.

dLLM's A2D checkpoints (`model_type` a2d-llama, a2d-qwen2, a2d-qwen3) load as they are; a plain `llama` /
`qwen2` / `qwen3` checkpoint becomes one with `adapter=a2d` (to fine-tune an AR model into a diffusion LM with
emdm_train, or to evaluate one). The weights keep their transformers names; logits are not shifted (MDLM-style
training: position i predicts token i) and the mask id is the tokenizer's (or `mask_token_id=`).
"""

from __future__ import annotations

from typing import Any

from ..backbones import DiffusionLlamaConfig, DiffusionQwen2Config, DiffusionQwen3Config
from ..denoiser import register_adapter
from .backbone import BackboneDenoiser

_CONFIGS = {"llama": DiffusionLlamaConfig, "qwen2": DiffusionQwen2Config, "qwen3": DiffusionQwen3Config}
_DROP = ("model_type", "architectures", "auto_map", "transformers_version", "torch_dtype", "dtype", "use_cache")


@register_adapter("a2d")
class A2DDenoiser(BackboneDenoiser):
    """dLLM A2D checkpoints, or stock Llama/Qwen2/Qwen3 ones with adapter=a2d, run bidirectionally."""

    foreign_model_types = ("a2d-llama", "a2d-qwen2", "a2d-qwen3")

    @classmethod
    def accepts_model_type(cls, model_type: str, explicit: bool) -> bool:
        return model_type in cls.foreign_model_types or (explicit and model_type in _CONFIGS)

    @classmethod
    def convert_config(cls, raw: dict[str, Any], path: str) -> Any:
        base = raw.get("model_type", "").removeprefix("a2d-")
        fields = {k: v for k, v in raw.items() if k not in _DROP}
        return _CONFIGS[base](**fields, diffusion_family="a2d", attention="bidirectional")
