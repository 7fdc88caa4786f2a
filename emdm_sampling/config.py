"""Sampler configuration: the options every strategy shares (typed fields), plus each strategy's own options.

`SamplerConfig` is the one description of a decoding: `generate`, the `python -m emdm_sampling` flags, lm-eval's
`--model_args` / `--gen_kwargs` and the ablation grid all come from its fields and type hints. A new shared option
is one field (with its help text and check) here: the CLI flag, the lm-eval argument, the conversion from strings
and the validation follow from it.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Mapping

from emdm_core import typed
from emdm_core.errors import ConfigError
from emdm_core.typed import at_least, in_range, option


def _known_sampler(name: str) -> str | None:
    from .strategies import SAMPLERS

    return None if name in SAMPLERS else (f"is not a registered sampler; registered samplers: "
                                          f"{', '.join(SAMPLERS.available())}")


def _known_schedule(name: str) -> str | None:
    from .schedules import SCHEDULES

    return None if name in SCHEDULES else f"is unknown; choose one of {', '.join(SCHEDULES.available())}"


@dataclass(frozen=True)
class SamplerConfig:
    """What to generate and how (immutable: derive variants with `replace`). See each field's help."""

    sampler: str = option("margin", "a registered strategy (`available_samplers()`)", check=_known_sampler)
    steps: int = option(64, "forward passes budgeted for the whole generation, split evenly over blocks (the "
                            "remainder to the first blocks; fewer steps than blocks is refused)", check=at_least(1))
    steps_per_block: int | None = option(None, "forward passes per block instead of `steps` split over the blocks "
                                               "(DiffusionGemma's max_denoising_steps per canvas): the budget then "
                                               "grows with the generation length", check=at_least(1))
    gen_length: int = option(64, "mask tokens appended after each prompt (0: infilling only)", check=at_least(0))
    block_length: int | None = option(None, "semi-autoregressive block size (none: one block); later blocks are "
                                            "hidden from selection", check=at_least(1))
    temperature: float = option(0.0, "sample proposals from softmax(logits / T); 0 = argmax",
                                check=at_least(0, "; 0 means argmax"))
    temperature_end: float | None = option(None, "a linear temperature schedule over each block's S steps: step j "
                                                 "uses end + (T - end) (S - j) / S (DiffusionGemma's t_max -> t_min); "
                                                 "none = T throughout",
                                           check=at_least(0))
    rng: str = option("counter", "randomness: counter (a hash of row seed, step and position: batch-invariant, the "
                                 "default) or torch (a torch.Generator per row seeded with its seed, drawing in the "
                                 "order of transformers' DiffusionGemma generate, to reproduce it token for token)",
                      choices=("counter", "torch"))
    schedule: str = option("linear", "tokens revealed per step: linear (LLaDA's split), cosine (MaskGIT's) or dream "
                                     "(Dream's diffusion_generate); ordering strategies only",
                           check=_known_schedule)
    threshold: float | None = option(None, "parallel decoding: reveal every position whose proposal has p >= "
                                           "threshold, at least the strategy's first choice, each step; a block "
                                           "ends when it has no mask left (`steps` is then not used); ordering "
                                           "strategies only",
                                     check=in_range(0.0, 1.0, low_open=True, hint=", or none for the schedule"))
    order_noise: float = option(0.0, "Gumbel noise on the ordering score: positions are ranked by score + c * Gumbel "
                                     "(Kim et al.'s coefficient; Dream's alg_temp = sampling the order from "
                                     "softmax(score / c)); 0 = deterministic order", check=at_least(0))
    order_noise_decay: str = option("none", "how order_noise shrinks over a block's steps: none, linear ((S-1-j)/S: "
                                            "Ye et al.'s stochastic top-k) or cosine",
                                    choices=("none", "linear", "cosine"))
    topk_remask: str = option("off", "Ye et al.'s re-masking top-k decoder around the sampler's score: every step "
                                     "predicts every position of the block, keeps the n - floor(n * rate) best and "
                                     "re-masks the rest, revealed cells included; rate over the block's steps: "
                                     "linear ((S-1-j)/S) or cosine; off = reveal-only decoding",
                              choices=("off", "linear", "cosine"))
    cache: str = option("auto", "KV cache: none (recompute every pass), prefix / dual (Fast-dLLM's approximate "
                                "caches), exact (block-causal models), auto (exact where it is, else none)",
                        choices=("auto", "none", "prefix", "dual", "exact"))
    stop_at_eos: bool = option(False, "speed option: once EOS is revealed, the generated masks after it become EOS "
                                      "and are not decoded (saves passes, but the model then sees EOS where the "
                                      "references still have masks); off = decode every position and cut the "
                                      "output at the first EOS, as LLaDA's and Dream's evaluations do")
    cfg_scale: float = option(0.0, "classifier-free guidance (LLaDA): logits = u + (s + 1)(c - u), with u from a "
                                   "pass with the prompt masked, batched with the conditional one; 0 = off",
                              check=at_least(0))
    logits_eos_inf: bool = option(False, "LLaDA's logits_eos_inf: EOS is never proposed (its logit set to -inf)")
    confidence_eos_eot_inf: bool = option(False, "LLaDA's confidence_eos_eot_inf, as its generate.py computes it: "
                                                 "the confidence p(x0) is taken with the EOT token's logit at -inf "
                                                 "(a proposed EOT gets confidence 0, the others renormalise)")
    seed: int = option(0, "default per-row seed (each row draws counter-based randomness from its own seed)")
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # the strategy's own options

    # Fields that callers set per request rather than users per run (lm-eval sets them from each request).
    PER_REQUEST: ClassVar[tuple[str, ...]] = ("gen_length", "seed")

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        self.validate()

    def validate(self) -> None:
        """Check every field and the strategy's options; raise `ConfigError` naming the fix."""
        typed.check_fields(self)
        strategy = self.strategy_class
        unknown = sorted(set(self.options) - set(strategy.options))
        if unknown:
            raise ConfigError(f"unknown option(s) {', '.join(unknown)} for sampler {self.sampler!r}; its options: "
                              f"{', '.join(sorted(strategy.options)) or 'none'}")
        strategy.check_options({**strategy.options, **self.options})
        if self.temperature_end is not None and self.temperature <= 0:
            raise ConfigError(f"temperature_end={self.temperature_end} is the end of a schedule that starts at "
                              f"temperature; give temperature > 0 (e.g. temperature=0.8,temperature_end=0.4)")
        if self.topk_remask != "off" and self.threshold is not None:
            raise ConfigError("topk_remask sets how many positions each step keeps; drop threshold (it is for "
                              "reveal-only decoding)")
        self._check_honoured(strategy)

    def _check_honoured(self, strategy: Any) -> None:
        """A strategy-dependent shared option set away from its default that the strategy does not read is an error
        naming the strategies that do (instead of a decoding that silently ignores it)."""
        from .strategies import SAMPLERS, STRATEGY_OPTIONS

        defaults = {f.name: f.default for f in typed.fields(type(self))}
        for name in STRATEGY_OPTIONS:
            value = getattr(self, name)
            if value == defaults[name] or name in strategy.honours:
                continue
            readers = [n for n in SAMPLERS.available() if name in SAMPLERS.get(n).honours]
            raise ConfigError(f"sampler {self.sampler!r} has its own update rule and does not use {name}={value}; "
                              f"drop {name}, or use a sampler that reads it: {', '.join(readers)}")

    @property
    def strategy_class(self) -> Any:
        """The registered `Strategy` class of `sampler`."""
        from .strategies import get_sampler

        return get_sampler(self.sampler)

    # -- building -----------------------------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        """The shared option names (every field but `options`)."""
        return [f.name for f in typed.fields(cls)]

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "SamplerConfig":
        """Build from flat keyword arguments (parsed `--model_args`, `--gen_kwargs`, CLI flags): shared fields and
        the chosen strategy's options, strings converted to each one's type. Unknown names raise `ConfigError`."""
        return cls().replace(**kwargs)

    @classmethod
    def for_denoiser(cls, denoiser: Any, **given: Any) -> "SamplerConfig":
        """`from_kwargs(**given)` over the model family's own decoding (`contract.sampler_defaults`, e.g.
        DiffusionGemma's entropy-bound sampler) when `given` names no sampler; emdm's defaults otherwise."""
        contract = denoiser.contract
        defaults = dict(contract.sampler_defaults) if "sampler" not in given else {}
        return cls.from_kwargs(**{**defaults, **given}).with_trained_options(contract, set(given))

    def with_trained_options(self, contract: Any, given: set[str]) -> "SamplerConfig":
        """The options the checkpoint's training implies for this sampler (`contract.trained_options`: a
        surprise-masked model's order and temperature) where the user gave none; a given one that differs wins,
        with a warning saying what the model was trained for."""
        trained = dict(contract.trained_options.get(self.sampler, {}))
        for name in [n for n in trained if n in given]:
            value = trained.pop(name)
            if str(self.options.get(name)) != str(value):
                warnings.warn(f"{name}={self.options.get(name)} overrides the checkpoint's training, which used "
                              f"{name}={value}", stacklevel=3)
        return self.replace(**trained) if trained else self

    def replace(self, **kwargs: Any) -> "SamplerConfig":
        """A copy with some shared fields and strategy options changed (strings converted to their types).

        Changing `sampler` drops the options the new strategy does not have."""
        hints = typed.hints(type(self))
        shared = {k: typed.coerce(kwargs.pop(k), hints[k], k) for k in list(kwargs) if k in self.field_names()}
        sampler = shared.get("sampler", self.sampler)
        from .strategies import get_sampler

        strategy = get_sampler(sampler)
        options = {k: v for k, v in self.options.items() if k in strategy.options}
        options.update(kwargs.pop("options", None) or {})
        for name in list(kwargs):
            if name in strategy.options:
                default = strategy.options[name]
                options[name] = typed.coerce(kwargs.pop(name), type(default), name)
        if kwargs:
            raise ConfigError(f"unknown sampler argument(s) {', '.join(sorted(kwargs))}; shared: "
                              f"{', '.join(self.field_names())}; {sampler!r} options: "
                              f"{', '.join(sorted(strategy.options)) or 'none'}")
        return dataclasses.replace(self, **shared, options=options)

    @classmethod
    def accepts(cls, name: str, sampler: str) -> bool:
        """Whether `name` is a shared field or an option of `sampler`."""
        from .strategies import get_sampler

        return name in cls.field_names() or name in get_sampler(sampler).options

    @classmethod
    def options_table(cls) -> str:
        """The Markdown table of the shared options (name, default, meaning) from the fields and their help: the
        README's table is this text (a test keeps them equal)."""
        lines = ["| option | default | meaning |", "|---|---|---|"]
        for f in typed.fields(cls):
            help_text = f.metadata["help"].replace("|", "\\|")
            lines.append(f"| `{f.name}` | `{f.default}` | {help_text} |")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """Plain dict: the shared fields and the options (a stable description of the decoding)."""
        out = {name: getattr(self, name) for name in self.field_names()}
        out["options"] = dict(sorted(self.options.items()))
        return out

    def key(self) -> str:
        """A canonical string of the whole configuration (for grouping requests that decode alike)."""
        return json.dumps(self.to_dict(), sort_keys=True, default=str)
