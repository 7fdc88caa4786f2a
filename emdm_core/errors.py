"""One-line errors for bad input: each message names the problem and what to do about it."""

from __future__ import annotations


class EMDMError(Exception):
    """Base class of every error emdm raises on purpose (bad input, unusable checkpoint)."""


class ConfigError(EMDMError, ValueError):
    """An option has an unknown name or a value outside its range."""


class CheckpointError(EMDMError):
    """A checkpoint cannot be found or cannot be used as a masked denoiser."""


class InputTooLongError(EMDMError, ValueError):
    """A prompt plus the requested generation does not fit in the model's maximum length."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
