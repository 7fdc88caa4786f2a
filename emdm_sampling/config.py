"""Sampler configuration: the options every strategy shares, plus each strategy's own options."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError


@dataclass
class SamplerConfig:
    """What to generate and how.

    sampler: a registered strategy name (`available_samplers()`).
    steps: forward passes budgeted for the whole generation (split evenly over blocks).
    gen_length: mask tokens appended after each prompt (0 for pure infilling).
    block_length: semi-autoregressive block size (None: one block); later blocks are hidden from selection.
    temperature: sample proposals from softmax(logits / temperature) (the Gumbel-max trick); 0 = argmax.
    schedule: how many positions each step reveals (`linear`, `cosine`).
    threshold: parallel decoding: reveal every position whose proposed token has probability >= threshold
        (at least one per step, the strategy's first choice); replaces the schedule.
    stop_at_eos: once EOS is revealed, the generated positions after it are EOS too and need no decoding.
    seed: default per-row seed (each row draws counter-based randomness from its own seed).
    options: strategy-specific options (see each strategy's `options`).
    """

    sampler: str = "margin"
    steps: int = 64
    gen_length: int = 64
    block_length: int | None = None
    temperature: float = 0.0
    schedule: str = "linear"
    threshold: float | None = None
    stop_at_eos: bool = True
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check ranges and the strategy's options; raise `ConfigError` naming the fix."""
        from .schedules import available_schedules
        from .strategies import get_sampler

        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1 (got {self.steps})")
        if self.gen_length < 0:
            raise ConfigError(f"gen_length must be >= 0 (got {self.gen_length})")
        if self.block_length is not None and self.block_length < 1:
            raise ConfigError(f"block_length must be >= 1 or None (got {self.block_length})")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0 (got {self.temperature}); 0 means argmax")
        if self.threshold is not None and not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"threshold must be in (0, 1] (got {self.threshold}), or None for the schedule")
        if self.schedule not in available_schedules():
            raise ConfigError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(available_schedules())}")
        strategy = get_sampler(self.sampler)
        unknown = sorted(set(self.options) - set(strategy.options))
        if unknown:
            known = ", ".join(sorted(strategy.options)) or "none"
            raise ConfigError(f"unknown option(s) {', '.join(unknown)} for sampler {self.sampler!r}; its options: "
                              f"{known}")
        strategy.check_options({**strategy.options, **self.options})

    @classmethod
    def field_names(cls) -> list[str]:
        """The shared option names."""
        return [f.name for f in dataclasses.fields(cls) if f.name != "options"]

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "SamplerConfig":
        """Build from flat keyword arguments (e.g. parsed `--model_args`): shared fields and strategy options.

        String values are converted to each field's type; names that are neither a shared field nor an option
        of the chosen sampler raise `ConfigError`.
        """
        from .strategies import get_sampler

        shared = {k: kwargs.pop(k) for k in list(kwargs) if k in cls.field_names()}
        sampler = shared.get("sampler", cls.sampler)
        strategy = get_sampler(sampler)
        options = dict(kwargs.pop("options", {}) or {})
        for name in list(kwargs):
            if name in strategy.options:
                options[name] = _coerce(kwargs.pop(name), type(strategy.options[name]), name)
        if kwargs:
            raise ConfigError(f"unknown sampler argument(s) {', '.join(sorted(kwargs))}; shared: "
                              f"{', '.join(cls.field_names())}; {sampler!r} options: "
                              f"{', '.join(sorted(strategy.options)) or 'none'}")
        types = {"steps": int, "gen_length": int, "block_length": int, "temperature": float, "threshold": float,
                 "stop_at_eos": bool, "seed": int, "sampler": str, "schedule": str}
        for name, value in shared.items():
            if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
                shared[name] = None if name in ("block_length", "threshold") else value
                if shared[name] is None:
                    continue
            shared[name] = _coerce(value, types[name], name)
        return cls(**shared, options=options)


def _coerce(value: Any, typ: type, name: str) -> Any:
    if isinstance(value, typ) and not (typ is int and isinstance(value, bool)):
        return value
    try:
        if typ is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            return bool(value)
        if typ is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return typ(float(value)) if typ is int and isinstance(value, str) and "." in value else typ(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} is not a valid {typ.__name__}") from None
