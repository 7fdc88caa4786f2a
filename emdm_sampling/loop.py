"""The one denoising loop that every strategy shares.

Each row is a prompt followed by `gen_length` masks (generation), a sequence with masks inside it (infilling), or
both. Per forward pass the loop computes the model's probabilities and proposals for the masked positions, hands
them to the strategy, and applies its reveal / re-mask decision. Block bookkeeping (semi-autoregressive decoding),
reveal counts (schedule or confidence threshold), EOS stopping and randomness are per row and vectorised, so a row
decodes the same way whatever else is in its batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from .adapters import Denoiser
from .config import SamplerConfig
from .errors import ConfigError, InputTooLongError
from .rng import CounterRNG, fold_seed
from .schedules import reveal_counts
from .strategies import StepContext, get_sampler
from .trace import Trace

_FAR = 1 << 40  # block id of positions that are never decoded
_STREAM_PROPOSAL = 0


@dataclass
class GenerationOutput:
    """Result of `generate`: full sequences (prompt included, no padding), the generated part, and costs."""

    sequences: list[list[int]]
    generated: list[list[int]]
    nfe: int  # batched forward passes
    row_nfe: list[int]  # forward passes each row took part in
    trace: Trace | None = None


def _as_rows(prompts: Sequence[Sequence[int]] | torch.Tensor) -> list[list[int]]:
    if isinstance(prompts, torch.Tensor):
        prompts = prompts.unsqueeze(0) if prompts.dim() == 1 else prompts
        return [row.tolist() for row in prompts]
    return [[int(t) for t in row] for row in prompts]


def _propose(logits: torch.Tensor, temperature: float, u: torch.Tensor) -> torch.Tensor:
    """argmax, or a sample from softmax(logits / temperature) by inverse CDF with the row's own uniforms.

    This is the distribution LLaDA's Gumbel-max draws from, with one uniform per position instead of one per
    vocabulary entry.
    """
    if temperature == 0:
        return logits.argmax(-1)
    cdf = torch.softmax(logits / temperature, dim=-1).cumsum(-1)
    target = (u.to(cdf.dtype) * cdf[..., -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, target).squeeze(-1).clamp(max=logits.shape[-1] - 1)


@torch.no_grad()
def generate(denoiser: Denoiser, prompts: Sequence[Sequence[int]] | torch.Tensor, config: SamplerConfig | None = None,
             seeds: Sequence[int] | None = None, trace: bool = False, progress: bool = False,
             **kwargs: Any) -> GenerationOutput:
    """Decode `prompts` (token-id lists) with `config` (or keyword arguments for `SamplerConfig.from_kwargs`).

    `seeds` gives each row its own seed (default: `config.seed` for every row). With `trace=True` the output
    carries a `Trace` of every step.
    """
    if config is None:
        config = SamplerConfig.from_kwargs(**kwargs)
    elif kwargs:
        raise ConfigError(f"pass either config or keyword options, not both (got {', '.join(kwargs)})")
    strategy = get_sampler(config.sampler)(config.options)
    rows = _as_rows(prompts)
    if not rows:
        return GenerationOutput([], [], 0, [], Trace([], denoiser.mask_token_id) if trace else None)
    if seeds is not None and len(seeds) != len(rows):
        raise ConfigError(f"seeds has {len(seeds)} entries for {len(rows)} prompts; give one seed per prompt")
    mask_id, dev = denoiser.mask_token_id, denoiser.device

    lengths = [len(r) + config.gen_length for r in rows]
    if max(lengths) > denoiser.max_length:
        worst = max(range(len(rows)), key=lambda i: lengths[i])
        raise InputTooLongError(
            f"prompt of {len(rows[worst])} tokens + {config.gen_length} generated = {lengths[worst]} exceeds the "
            f"model's maximum length {denoiser.max_length}; shorten the prompt or lower gen_length (max_gen_toks)")
    B, L = len(rows), max(lengths)
    pad = torch.tensor([L - n for n in lengths], device=dev)
    x = torch.full((B, L), denoiser.pad_token_id, dtype=torch.long, device=dev)
    flat = torch.tensor([t for r in rows for t in r + [mask_id] * config.gen_length], dtype=torch.long, device=dev)
    col = torch.arange(L, device=dev).unsqueeze(0)
    attn = col >= pad.unsqueeze(1)
    x[attn] = flat
    prompt_end = pad + torch.tensor([len(r) for r in rows], device=dev)
    gen_region = col >= prompt_end.unsqueeze(1)
    fill = (x == mask_id) & attn  # positions the loop decodes: appended masks and masks inside prompts

    init = Trace([r + [mask_id] * config.gen_length for r in rows], mask_id) if trace else None
    if not fill.any():
        return _finish(x, pad, prompt_end, denoiser, config, 0, [0] * B, init)

    # Work on the window of columns that hold anything to decode (the prompt before it is context only).
    c0 = int(fill.any(0).nonzero()[0])
    xw = x[:, c0:]  # a view: writes to the window are what the model sees at the next step
    fillw, genw = fill[:, c0:].clone(), gen_region[:, c0:]
    n_fill = fillw.sum(1)
    rank = fillw.long().cumsum(1) - 1
    block_len = config.block_length or int(n_fill.max())
    block_id = torch.where(fillw, rank // block_len, torch.full_like(rank, _FAR))
    n_blocks = ((n_fill + block_len - 1) // block_len).clamp(min=1)
    # `steps` is split over a row's blocks; the first `steps % n_blocks` blocks get one step more.
    base_steps, extra_steps = config.steps // n_blocks, config.steps % n_blocks
    block_steps = torch.ones_like(n_blocks)

    seed_t = torch.tensor([fold_seed(s) for s in (seeds if seeds is not None else [config.seed] * B)], device=dev)
    rng = CounterRNG(seed_t, (col - pad.unsqueeze(1)).clamp(min=0)[:, c0:])
    surprise = _surprise_for(denoiser)
    confidence = torch.zeros(xw.shape, dtype=torch.float32, device=dev)
    cur_block = torch.full((B,), -1, dtype=torch.long, device=dev)
    bstep = torch.zeros(B, dtype=torch.long, device=dev)
    m_entry = torch.zeros(B, dtype=torch.long, device=dev)
    row_nfe = torch.zeros(B, dtype=torch.long, device=dev)
    state: dict[str, torch.Tensor] = {}
    eos = denoiser.eos_token_id if config.stop_at_eos else None
    max_iters = int(n_fill.max()) + config.steps + int(n_blocks.max()) + strategy.extra_steps() + 1
    bar = tqdm(total=max_iters, desc=f"{config.sampler}", disable=not progress, leave=False)

    nfe = 0
    while True:
        masked = (xw == mask_id) & fillw
        active = masked.any(1)
        if not active.any():
            break
        if nfe >= max_iters:  # every schedule ends within its budget; this guards against a faulty strategy
            raise RuntimeError(f"sampler {config.sampler!r} left masks after {nfe} steps; its step() must reveal "
                               f"every masked position by the last step of a block")
        cur = torch.where(masked, block_id, torch.full_like(block_id, _FAR)).min(1).values
        entering = cur != cur_block
        in_block = block_id == cur.unsqueeze(1)
        m_entry = torch.where(entering, (masked & in_block).sum(1), m_entry)
        bstep = torch.where(entering, torch.zeros_like(bstep), bstep)
        block_steps = torch.where(entering, (base_steps + (cur < extra_steps).long()).clamp(min=1), block_steps)
        cur_block = cur

        idx = active.nonzero().flatten()
        sub = slice(None) if len(idx) == B else idx
        logits = denoiser.logits(x[sub], attn[sub])[:, c0:]
        logits[..., mask_id] = float("-inf")
        # Only positions a strategy can reveal (or, for remasking strategies, any masked one) need the
        # vocabulary-wide softmax statistics: gather them once, so that cost shrinks as decoding proceeds.
        scored = masked[sub] if strategy.remasks else (masked & in_block)[sub]
        flat = logits[scored].float()
        flat_log_z = torch.logsumexp(flat, dim=-1)
        flat_x0 = _propose(flat, config.temperature, rng.uniform(nfe, _STREAM_PROPOSAL)[sub][scored])
        x0 = xw[sub].clone()
        x0[scored] = flat_x0
        p_x0 = torch.zeros(scored.shape, dtype=flat.dtype, device=dev)
        p_x0[scored] = torch.exp(flat.gather(-1, flat_x0.unsqueeze(-1)).squeeze(-1) - flat_log_z)
        ctx = StepContext(
            step=nfe, x=xw[sub], logits=logits, scored=scored, flat_logits=flat, flat_log_z=flat_log_z,
            x0=x0, p_x0=p_x0, masked=masked[sub],
            eligible=(masked & in_block)[sub], block=(fillw & in_block)[sub], fillable=fillw[sub],
            confidence=confidence[sub], k=reveal_counts(config.schedule, m_entry, bstep, block_steps)[sub],
            block_step=bstep[sub], block_steps=block_steps[sub], threshold=config.threshold, rng=_SubRNG(rng, sub),
            mask_token_id=mask_id, surprise=surprise, rows=idx, batch_size=B, state=state)
        result = strategy.step(ctx)

        reveal = result.reveal & ctx.masked
        tokens = x0 if result.tokens is None else result.tokens
        new_x = torch.where(reveal, tokens, ctx.x)
        confidence[sub] = torch.where(reveal, p_x0, ctx.confidence)
        remask = torch.zeros_like(reveal)
        if result.remask is not None:
            remask = result.remask & ctx.fillable & (new_x != mask_id)
            new_x = new_x.masked_fill(remask, mask_id)
        xw[sub] = new_x
        if eos is not None:
            fillw &= ~_fill_after_eos(xw, genw, eos, mask_id)
        bstep[sub] += 1
        row_nfe[sub] += 1
        nfe += 1
        bar.update(1)
        if init is not None:
            _record(init, nfe - 1, x, pad, c0, idx, reveal, remask, p_x0)
    bar.close()
    return _finish(x, pad, prompt_end, denoiser, config, nfe, row_nfe.tolist(), init)


class _SubRNG:
    """The batch's counter RNG restricted to the rows of this step."""

    def __init__(self, rng: CounterRNG, sub: slice | torch.Tensor):
        self._rng, self._sub = rng, sub

    def uniform(self, step: int, stream: int) -> torch.Tensor:
        return self._rng.uniform(step, stream)[self._sub]

    def gumbel(self, step: int, stream: int) -> torch.Tensor:
        return self._rng.gumbel(step, stream)[self._sub]


def _record(trace: Trace, step: int, x: torch.Tensor, pad: torch.Tensor, c0: int, idx: torch.Tensor,
            reveal: torch.Tensor, remask: torch.Tensor, p_x0: torch.Tensor) -> None:
    """Add one step to the trace, expanding this step's rows and window back to the whole batch."""

    def whole(t: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape, dtype=t.dtype, device=t.device)
        out[idx, c0:] = t
        return out

    trace.record(step, x, pad, whole(reveal), whole(remask), whole(p_x0 * reveal))


def _fill_after_eos(xw: torch.Tensor, genw: torch.Tensor, eos: int, mask_id: int) -> torch.Tensor:
    """Set the generated masks after each row's first revealed EOS to EOS; return the positions after it."""
    is_eos = genw & (xw == eos)
    after = (is_eos.long().cumsum(1) - is_eos.long()) > 0
    xw.masked_fill_(after & genw & (xw == mask_id), eos)
    return after & genw


def _surprise_for(denoiser: Denoiser) -> torch.Tensor | None:
    if denoiser.surprise is None:
        return None
    s = denoiser.surprise.float().to(denoiser.device)
    vocab = denoiser.vocab_size
    if s.numel() < vocab:  # tokens the table does not know (added ids, the mask) carry no surprise
        s = torch.cat([s, s.new_zeros(vocab - s.numel())])
    return s


def _finish(x: torch.Tensor, pad: torch.Tensor, prompt_end: torch.Tensor, denoiser: Denoiser, config: SamplerConfig,
            nfe: int, row_nfe: list[int], trace: Trace | None) -> GenerationOutput:
    rows = x.cpu().tolist()
    seqs = [r[p:] for r, p in zip(rows, pad.tolist())]
    gens = [r[e:] for r, e in zip(rows, prompt_end.tolist())]
    if config.stop_at_eos and denoiser.eos_token_id is not None:
        gens = [g[: g.index(denoiser.eos_token_id)] if denoiser.eos_token_id in g else g for g in gens]
    return GenerationOutput(seqs, gens, nfe, row_nfe, trace)
