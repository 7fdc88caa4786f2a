"""Device and dtype resolution, shared by the sampler, the lm-eval model and the trainer."""

from __future__ import annotations

import warnings
from typing import Any, Callable

import torch

from .errors import ConfigError

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def resolve_device(device: str | torch.device | None, warn: Callable[[str], Any] = _warn) -> torch.device:
    """The requested device; `None`/`auto` is CUDA when available. A CUDA (or MPS) request on a machine without it
    falls back to the CPU with a warning (lm-eval passes `cuda:0` by default)."""
    if device is None or str(device) in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        warn(f"device={device} requested but CUDA is not available; running on the CPU")
        return torch.device("cpu")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        warn(f"device={device} requested but MPS is not available; running on the CPU")
        return torch.device("cpu")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """float32 on CPU, bfloat16 on a GPU that supports it, unless `dtype` names one of float32/bfloat16/float16."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of auto, float32, bfloat16, float16") from None
