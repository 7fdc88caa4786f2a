"""The model families emdm knows, one adapter module each (importing this package registers them).

`masked_lm` (any AutoModelForMaskedLM, the fallback: registered first, tried last), the backbone families `llada`,
`dream`, `sdar`, `a2d` (transformers' Llama/Qwen2/Qwen3 layers, no remote code, KV caches), and `remote` (a
checkpoint's own code).
"""

from . import masked_lm  # noqa: F401,I001  (first: later registrations are tried before it)
from . import a2d, diffusion_gemma, dream, llada, remote, sdar  # noqa: F401,E402
from .backbone import BackboneDenoiser  # noqa: E402

__all__ = ["BackboneDenoiser", "native_family_for"]


def native_family_for(model_type: str, adapter: str | None = None) -> type[BackboneDenoiser] | None:
    """The backbone family that converts a config.json of `model_type` (the one named by `adapter`, if any)."""
    from ..denoiser import ADAPTERS

    if adapter is not None:
        cls = ADAPTERS.get(adapter)
        explicit = issubclass(cls, BackboneDenoiser) and cls.accepts_model_type(model_type, explicit=True)
        return cls if explicit else None
    for _name, cls in ADAPTERS.items():
        if isinstance(cls, type) and issubclass(cls, BackboneDenoiser) and cls.accepts_model_type(model_type, False):
            return cls
    return None
