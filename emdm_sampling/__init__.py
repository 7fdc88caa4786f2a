"""emdm_sampling: unmasking strategies for masked diffusion language models, over one shared denoising loop.

    from emdm_sampling import load_denoiser, generate
    den = load_denoiser("path/to/checkpoint")
    out = generate(den, [den.tokenizer("The capital of France is")["input_ids"]], sampler="margin", steps=16,
                   gen_length=16)
    print(den.tokenizer.decode(out.generated[0]))
"""

from emdm_core.errors import CheckpointError, ConfigError, EMDMError, InputTooLongError
from emdm_models import Denoiser, available_adapters, load_denoiser, register_adapter

from .config import SamplerConfig
from .loop import GenerationOutput, generate
from .plan import DecodePlan, plan_decoding
from .record import DecodeRecord, RowStep, StepRecord
from .session import DecodeSession
from .schedules import available_schedules, register_schedule
from .strategies import StepContext, StepResult, Strategy, available_samplers, get_sampler, register_sampler
from .trace import Trace

__all__ = [
    "CheckpointError", "ConfigError", "DecodePlan", "DecodeRecord", "DecodeSession", "Denoiser", "EMDMError",
    "GenerationOutput", "InputTooLongError", "RowStep", "SamplerConfig", "StepContext", "StepRecord", "StepResult",
    "Strategy", "Trace", "available_adapters", "available_samplers", "available_schedules", "generate",
    "get_sampler", "load_denoiser", "plan_decoding", "register_adapter", "register_sampler", "register_schedule",
]
