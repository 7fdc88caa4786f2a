"""`generate`: decode a batch of prompts with any registered strategy (a short driver over a `DecodeSession`).

The steps of a decoding live in `session.py` (start: canvas, blocks, noise, randomness; per pass: rows and blocks
-> forward -> proposals -> strategy -> apply -> record); the config is checked against the model's contract once,
in `plan.py`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from emdm_core.errors import ConfigError
from emdm_models.denoiser import Denoiser

from .config import SamplerConfig
from .output import GenerationOutput
from .plan import DecodePlan, plan_decoding
from .session import DecodeSession
from .trace import Trace

__all__ = ["GenerationOutput", "generate"]


@torch.no_grad()
def generate(denoiser: Denoiser, prompts: Sequence[Sequence[int]] | torch.Tensor,
             config: SamplerConfig | DecodePlan | None = None, seeds: Sequence[int] | None = None,
             trace: bool = False, record: bool = False, progress: bool = False, **kwargs: Any) -> GenerationOutput:
    """Decode `prompts` (token-id lists) with `config` (a `SamplerConfig`, a `DecodePlan` already checked against
    this model, or keyword arguments for `SamplerConfig.from_kwargs`).

    `seeds` gives each row its own seed (default: `config.seed` for every row). `trace=True` adds a `Trace` of
    every step; `record=True` a `DecodeRecord` (each step's decisions with their log-probabilities).
    """
    if config is None:
        config = SamplerConfig.from_kwargs(**kwargs).with_trained_options(denoiser.contract, set(kwargs))
    elif kwargs:
        raise ConfigError(f"pass either config or keyword options, not both (got {', '.join(kwargs)})")
    plan = config if isinstance(config, DecodePlan) else plan_decoding(config, denoiser.contract)
    rows = _as_rows(prompts)
    if not rows:
        return GenerationOutput([], [], 0, [], Trace([], denoiser.mask_token_id) if trace else None)
    if seeds is not None and len(seeds) != len(rows):
        raise ConfigError(f"seeds has {len(seeds)} entries for {len(rows)} prompts; give one seed per prompt")
    session = DecodeSession(denoiser, rows, plan, seeds, trace=trace, record=record, progress=progress)
    while session.step():
        pass
    return session.result()


def _as_rows(prompts: Sequence[Sequence[int]] | torch.Tensor) -> list[list[int]]:
    if isinstance(prompts, torch.Tensor):
        prompts = prompts.unsqueeze(0) if prompts.dim() == 1 else prompts
        return [row.tolist() for row in prompts]
    return [[int(t) for t in row] for row in prompts]
