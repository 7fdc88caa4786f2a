"""emdm_models: the model collection. Families (adapters) that turn checkpoints into denoisers, emdm's own
architectures, the embedded checkpoints (`pretrained=emdm:NAME`), tiny test checkpoints and tokenizer training.

    from emdm_models import load_denoiser
    den = load_denoiser("emdm:sudoku")          # or a checkpoint directory / Hub id
"""

from .denoiser import Denoiser, adapter_for, available_adapters, register_adapter
from .loading import available_embedded, load_denoiser, register_architectures

register_architectures()

__all__ = ["Denoiser", "adapter_for", "available_adapters", "available_embedded", "load_denoiser",
           "register_adapter", "register_architectures"]
