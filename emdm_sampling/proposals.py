"""Step 5 of the loop: the model's proposals and their probabilities at the positions a step scores.

The logits of the scored positions are gathered into one [N, V] buffer (reused across steps), tempered, and either
argmaxed or sampled by an exact float64 inverse CDF with each row's own counter-based uniforms.
"""

from __future__ import annotations

import torch

from emdm_core.contract import Logits

from .canvas import BlockState
from .config import SamplerConfig


def step_temperature(config: SamplerConfig, blocks: BlockState, sub: slice | torch.Tensor) -> float | torch.Tensor:
    """This pass's temperature: `config.temperature`, or per row [b] (float32) on the linear schedule to
    `temperature_end` over the block's S steps, end + (T - end) ((S - j) / S) at step j, in float32 as
    DiffusionGemma's LinearTemperatureScheduleLogitsProcessor computes it."""
    if config.temperature_end is None:
        return config.temperature
    remaining = (blocks.steps_in_block - blocks.step_in_block)[sub].to(torch.int32)
    fraction = remaining / blocks.steps_in_block[sub]
    return config.temperature_end + ((config.temperature - config.temperature_end) * fraction)


def per_position(value: float | torch.Tensor, scored: torch.Tensor) -> float | torch.Tensor:
    """A per-row value [b] repeated for each scored position ([N, 1]); a float unchanged."""
    if not isinstance(value, torch.Tensor):
        return value
    return value.repeat_interleave(scored.sum(1)).unsqueeze(-1)


def propose(logits: torch.Tensor, temperature: float | torch.Tensor, u: torch.Tensor,
            exp_logits: torch.Tensor | None = None) -> torch.Tensor:
    """argmax, or a sample from softmax(logits / temperature) by inverse CDF with the row's own uniforms.

    This is the distribution LLaDA's Gumbel-max draws from, with one uniform per position instead of one per
    vocabulary entry. `exp_logits` (exp(logits - row max), at temperature 1) saves recomputing the exponentials.
    """
    constant = not isinstance(temperature, torch.Tensor)
    if constant and temperature == 0:
        return logits.argmax(-1)
    if constant and temperature == 1 and exp_logits is not None:
        weights = exp_logits
    else:
        weights = ((logits - logits.amax(-1, keepdim=True)) / temperature).exp_()
    return inverse_cdf(weights, u)


_CDF_CHUNK = 256


def inverse_cdf(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """[N] the first index whose cumulative weight reaches u * total, per row of `weights` [N, V] (>= 0).

    A float32 running sum over a 126k-token vocabulary drifts enough that a row's sample would depend on rounding;
    LLaDA accumulates its Gumbel noise in float64. Two levels keep that exact without an [N, V] float64 copy: the
    sums of chunks of 256 entries (float32 within a chunk, float64 across chunks) find the chunk, then that chunk's
    float64 running sum finds the entry.
    """
    n, vocab = weights.shape
    full = vocab - vocab % _CDF_CHUNK
    chunk_sums = weights[:, :full].unflatten(1, (-1, _CDF_CHUNK)).sum(-1).double()
    if full < vocab:
        chunk_sums = torch.cat([chunk_sums, weights[:, full:].sum(-1, keepdim=True).double()], dim=1)
    cum = chunk_sums.cumsum(-1)
    target = u.to(torch.float64) * cum[:, -1]
    chunk = torch.searchsorted(cum, target.unsqueeze(-1)).squeeze(-1).clamp(max=cum.shape[1] - 1)
    before = torch.where(chunk > 0, cum.gather(1, (chunk - 1).clamp(min=0).unsqueeze(-1)).squeeze(-1),
                         torch.zeros_like(target))
    index = chunk.unsqueeze(-1) * _CDF_CHUNK + torch.arange(_CDF_CHUNK, device=weights.device)
    inside = index < vocab
    local = weights.gather(1, index.clamp(max=vocab - 1)).to(torch.float64).masked_fill(~inside, 0.0)
    local_cum = before.unsqueeze(-1) + local.cumsum(-1)
    offset = torch.searchsorted(local_cum, target.unsqueeze(-1)).squeeze(-1).clamp(max=_CDF_CHUNK - 1)
    return (chunk * _CDF_CHUNK + offset).clamp(max=vocab - 1)


def probability(logits: torch.Tensor, log_z: torch.Tensor, tokens: torch.Tensor,
                 excluded: int | None) -> torch.Tensor:
    """p(token) under softmax(logits); with `excluded`, under the softmax without that token (0 for it)."""
    if excluded is not None:
        logits = logits.clone()
        logits[:, excluded] = torch.finfo(logits.dtype).min
        log_z = torch.logsumexp(logits, dim=-1)
    return torch.exp(logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - log_z)


class Workspace:
    """Buffers reused across the steps of one `generate` call. The loop's [N, V] temporaries (the gathered logits,
    their exponentials) are rewritten every step; on the CPU, allocating them fresh costs more in page faults than
    the arithmetic (a 32 MB gather: 15 ms fresh, 2 ms into a reused buffer). Strategies see them as this step's
    `StepContext.flat_logits` / `flat_exp`: valid for the step only."""

    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}

    def take(self, name: str, rows: int, like: torch.Tensor) -> torch.Tensor:
        """An uninitialised [rows, V] tensor of `like`'s dtype and device (grown when a step needs more rows)."""
        shape = (rows, like.shape[-1])
        buf = self.buffers.get(name)
        if buf is None or buf.shape[0] < rows or buf.shape[1] != shape[1] or buf.dtype != like.dtype \
                or buf.device != like.device:
            buf = self.buffers[name] = like.new_empty(shape)
        return buf[:rows]


def gather(passes: list[tuple[torch.Tensor, Logits]], positions: torch.Tensor,
            workspace: Workspace) -> torch.Tensor:
    """[N, V] logits at the True entries of `positions` [b, W] (row-major), from the pass(es) that computed them,
    in the workspace's logits buffer."""
    n = int(positions.sum())
    out = workspace.take("logits", n, passes[0][1].values)
    if len(passes) == 1:
        return passes[0][1].at(positions, out=out)
    order = torch.full(positions.shape, -1, dtype=torch.long, device=positions.device)
    order[positions] = torch.arange(n, device=positions.device)
    for index, logits in passes:
        sel = positions[index]
        out[order[index][sel]] = logits.at(sel)
    return out


def dense(passes: list[tuple[torch.Tensor, Logits]], mask_id: int | None) -> torch.Tensor:
    """[b, W, V] logits of a pass (columns not computed: 0), the mask token at -inf (for `StepContext.logits`)."""
    first = passes[0][1]
    rows = sum(len(index) for index, _ in passes)
    out = first.values.new_zeros((rows, first.width, first.values.shape[-1]))
    for index, logits in passes:
        out[index] = logits.dense()
    if mask_id is not None:
        out[..., mask_id] = float("-inf")
    return out
