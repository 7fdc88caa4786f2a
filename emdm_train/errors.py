"""Errors of `emdm_train`: one-line messages that say what to do; the CLI prints them as `error: <message>`."""

from __future__ import annotations

from emdm_core.errors import ConfigError, EMDMError


class TrainError(EMDMError):
    """Training cannot start or continue because of bad input (data, model, options, output directory)."""


class TrainConfigError(TrainError, ConfigError):
    """An option of the training recipe has an unknown name or a value outside its range."""


class DataError(TrainError, ValueError):
    """The training data cannot be loaded or holds nothing usable."""
