"""One validation of a decoding config against a model's contract, done once per (config, model).

`plan_decoding` checks what `SamplerConfig.validate` cannot (it knows no model): the strategy decodes the model's
noise, the cache mode exists for the model, blocks fit its attention blocks or canvases, guidance is defined. The
result, a `DecodePlan`, is what a decode session runs; the Python API, `python -m emdm_sampling` and lm-eval all
build it the same way, and lm-eval rebuilds it only for requests whose settings differ.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from emdm_core.contract import ModelContract
from emdm_core.errors import ConfigError

from .config import SamplerConfig
from .strategies import SAMPLERS, model_problem

_NOISE_KINDS = {"mask": "masked-diffusion", "uniform": "uniform-state (Duo, DiffusionGemma)"}


@dataclass(frozen=True)
class DecodePlan:
    """A config checked against a model contract: `config` (with the model's canvas length as block_length where
    it denoises canvases), the `contract`, and the `cache` mode that runs (`auto` resolved)."""

    config: SamplerConfig
    contract: ModelContract
    cache: str


def plan_decoding(config: SamplerConfig, contract: ModelContract) -> DecodePlan:
    """Check `config` against `contract`; raise a one-line `ConfigError` naming the fix."""
    strategy = config.strategy_class
    problem = model_problem(strategy, contract)
    fits = ", ".join(n for n in SAMPLERS.available() if model_problem(SAMPLERS.get(n), contract) is None)
    if problem == "noise":
        wanted = " and ".join(_NOISE_KINDS[k] for k in strategy.noises)
        raise ConfigError(f"sampler {config.sampler!r} is for {wanted} models; {contract.family} is a "
                          f"{_NOISE_KINDS[contract.noise]} model: use one of {fits}")
    if problem == "surprise":
        raise ConfigError(f"sampler={config.sampler} needs the checkpoint's surprise table (corpus token frequencies: "
                          f"surprise.safetensors beside config.json, saved by emdm_train); fine-tune with emdm_train, "
                          f"or use one of {fits}")
    block = contract.attention_block
    if block and config.block_length and config.block_length % block:
        raise ConfigError(f"block_length={config.block_length} must be a multiple of the model's attention block "
                          f"({block}); leave it unset to decode one attention block at a time")
    canvas = contract.canvas_length
    if canvas and config.block_length not in (None, canvas):
        raise ConfigError(f"block_length={config.block_length}: {contract.family} denoises canvases of {canvas} "
                          f"tokens; leave block_length unset (or {canvas})")
    if canvas:
        config = dataclasses.replace(config, block_length=canvas)
    if strategy.verifies and not contract.verification:
        raise ConfigError(f"sampler {config.sampler!r} verifies decided tokens with shadow positions in the same pass, "
                          f"which {contract.family} cannot run (it needs an unshifted bidirectional backbone: llada, "
                          f"a2d-llama); choose another sampler")
    if strategy.verifies and (config.cache not in ("auto", "none") or config.cfg_scale > 0):
        raise ConfigError(f"sampler {config.sampler!r} runs its verification pass without a KV cache or guidance; "
                          f"use cache=none and cfg_scale=0")
    if config.cfg_scale > 0 and not contract.guidance:
        raise ConfigError(f"cfg_scale: classifier-free guidance is not defined for {contract.family} (it has no "
                          f"mask token to blank the prompt with); use cfg_scale=0")
    return DecodePlan(config, contract, _cache_mode(config, contract))


def _cache_mode(config: SamplerConfig, contract: ModelContract) -> str:
    """The cache mode that runs: `auto` is the model's (exact for block-causal attention, else none); with
    block-causal attention prefix and dual are exact too (the cache then holds final keys/values)."""
    mode = contract.auto_cache if config.cache == "auto" else config.cache
    if contract.attention_block and mode in ("prefix", "dual"):
        mode = "exact"
    if mode not in contract.cache_modes:
        if contract.cache_note:
            raise ConfigError(f"cache={mode}: {contract.cache_note}")
        if mode == "exact":
            raise ConfigError("cache=exact needs a block-causal model (sdar); for a bidirectional model use "
                              "cache=prefix or cache=dual (Fast-dLLM's approximate caches) or cache=none")
        raise ConfigError(f"cache={mode} needs a model family with a KV cache (llada, dream, sdar, a2d); the "
                          f"{contract.family} adapter recomputes every pass: use cache=none")
    if config.cfg_scale > 0 and mode != "none":
        raise ConfigError(f"cfg_scale needs cache=none (the unconditional pass has its own keys and values); "
                          f"got cache={mode}")
    return mode
