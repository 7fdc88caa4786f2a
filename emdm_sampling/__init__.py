"""emdm_sampling: unmasking strategies for masked diffusion language models, over one shared denoising loop."""

from .adapters import Denoiser, available_adapters, load_denoiser, register_adapter
from .errors import CheckpointError, ConfigError, EMDMError, InputTooLongError

__all__ = ["Denoiser", "available_adapters", "load_denoiser", "register_adapter", "CheckpointError", "ConfigError",
           "EMDMError", "InputTooLongError"]
