"""emdm_train: fine-tune or pre-train masked diffusion language models with uniform, LLaDA, surprise-weighted or
entropy-ordered masking (`python -m emdm_train --help`)."""

from .config import TrainConfig, parse_args
from .errors import DataError, TrainConfigError, TrainError
from .masking import (MaskedBatch, MaskingCollator, MaskingSchedule, Noise, available_maskings, build_masking,
                      maskable_positions, register_masking)

__all__ = ["TrainConfig", "parse_args", "train", "TrainError", "TrainConfigError", "DataError", "MaskedBatch",
           "MaskingCollator", "MaskingSchedule", "Noise", "available_maskings", "build_masking",
           "maskable_positions", "register_masking"]


def train(cfg: TrainConfig):
    """Run a training recipe; see `emdm_train.trainer.train`."""
    from .trainer import train as _train

    return _train(cfg)
