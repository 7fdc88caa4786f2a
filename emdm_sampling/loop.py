"""The one denoising loop that every strategy shares.

Each row is a prompt followed by `gen_length` masks (generation), a sequence with masks inside it (infilling), or
both. Per forward pass the loop computes the model's probabilities and proposals for the masked positions, hands
them to the strategy, and applies its reveal / re-mask decision. Block bookkeeping (semi-autoregressive decoding),
reveal counts (schedule or confidence threshold), EOS stopping and randomness are per row and vectorised, so a row
decodes the same way whatever else is in its batch.

The steps, in `generate`: 1. canvas (prompts + masks, left-padded) -> 2. block state -> per pass: 3. rows and
blocks -> 4. forward -> 5. proposals -> 6. strategy step -> 7. apply (reveal, re-mask, EOS) -> 8. trace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from emdm_core.errors import ConfigError, InputTooLongError
from emdm_models.denoiser import Denoiser

from .config import SamplerConfig
from .forward import Logits, ModelForward
from .noise import canvas_noise
from .rng import CounterRNG, TorchRowGenerators, fold_seed
from .schedules import get_schedule, reveal_counts
from .strategies import StepContext, available_samplers
from .strategies.remasking import TopKRemaskDecoder
from .trace import Trace

_FAR = 1 << 40  # block id of positions that are never decoded
_STREAM_PROPOSAL = 0
_STREAM_START_NOISE = 8  # uniform-state: the noise every position starts from


@dataclass
class GenerationOutput:
    """Result of `generate`: full sequences (prompt included, no padding), the generated part, and costs."""

    sequences: list[list[int]]
    generated: list[list[int]]
    nfe: int  # batched forward passes (model calls)
    row_nfe: list[int]  # forward passes each row took part in
    trace: Trace | None = None
    nfe_full: int = 0  # of `nfe`: passes over whole sequences (all of them without a cache)
    nfe_partial: int = 0  # of `nfe`: cached passes over a window (a block, or a block and what follows)


@dataclass
class Canvas:
    """The batch being decoded: left-padded tokens and which positions the loop fills.

    `tokens` [B, L] is what the model reads; `window` (columns `start:`) is where anything is decoded (the prompt
    before it is context only), and `window_tokens` is a view into `tokens`, so writing a step's result there is
    what the model sees at the next pass."""

    tokens: torch.Tensor  # [B, L]
    attention: torch.Tensor  # [B, L] bool: real tokens (not padding)
    padding: torch.Tensor  # [B] left padding per row
    prompt_end: torch.Tensor  # [B] column where each row's generation starts
    fill: torch.Tensor  # [B, L] bool: positions to decode (appended masks and masks inside prompts)
    generated: torch.Tensor  # [B, L] bool: the generation region (after the prompt)
    kept_end: torch.Tensor | None = None  # [B] column after the last token returned (extra masks are cut off)
    start: int = 0  # first column of the decoding window

    @classmethod
    def build(cls, rows: list[list[int]], gen_length: int, denoiser: Denoiser,
              complete_block: int | None = None, whole_canvases: int | None = None,
              infill: bool = True) -> "Canvas":
        """Left-padded prompts + `gen_length` masks each; with `complete_block`, more masks until each row ends on a
        block boundary (block-causal models are trained on whole blocks; the extra tokens are cut off again); with
        `whole_canvases`, more until the generation is a whole number of canvases of that length (DiffusionGemma).
        `infill=False`: only the appended positions are decoded (a prompt token equal to the mask id is text)."""
        mask_id, dev = denoiser.mask_token_id, denoiser.device
        lengths = [len(r) + gen_length for r in rows]
        if max(lengths) > denoiser.max_length:
            worst = max(range(len(rows)), key=lambda i: lengths[i])
            raise InputTooLongError(
                f"prompt of {len(rows[worst])} tokens + {gen_length} generated = {lengths[worst]} exceeds the "
                f"model's maximum length {denoiser.max_length}; shorten the prompt or lower gen_length "
                f"(max_gen_toks)")
        extra = [0] * len(rows)
        if complete_block:
            extra = [min((-n) % complete_block, denoiser.max_length - n) for n in lengths]
        elif whole_canvases:
            extra = [min((-gen_length) % whole_canvases, denoiser.max_length - n) for n in lengths]
        batch, width = len(rows), max(n + e for n, e in zip(lengths, extra))
        padding = torch.tensor([width - n - e for n, e in zip(lengths, extra)], device=dev)
        tokens = torch.full((batch, width), denoiser.pad_token_id, dtype=torch.long, device=dev)
        flat = torch.tensor([t for r, e in zip(rows, extra) for t in r + [mask_id] * (gen_length + e)],
                            dtype=torch.long, device=dev)
        col = torch.arange(width, device=dev).unsqueeze(0)
        attention = col >= padding.unsqueeze(1)
        tokens[attention] = flat
        prompt_end = padding + torch.tensor([len(r) for r in rows], device=dev)
        generated = col >= prompt_end.unsqueeze(1)
        fill = (tokens == mask_id) & attention if infill else generated
        canvas = cls(tokens, attention, padding, prompt_end, fill, generated, kept_end=prompt_end + gen_length)
        if fill.any():
            canvas.start = int(fill.any(0).nonzero()[0])
        return canvas

    @property
    def window_tokens(self) -> torch.Tensor:
        return self.tokens[:, self.start:]

    def window(self, t: torch.Tensor) -> torch.Tensor:
        """The decoding window's columns of a [B, L, ...] tensor."""
        return t[:, self.start:]

    def positions(self) -> torch.Tensor:
        """[B, L] position of each column counted from the row's first real token (padding: 0)."""
        col = torch.arange(self.tokens.shape[1], device=self.tokens.device).unsqueeze(0)
        return (col - self.padding.unsqueeze(1)).clamp(min=0)


@dataclass
class BlockState:
    """Semi-autoregressive bookkeeping per row: which block is being decoded, its step budget and progress."""

    block_id: torch.Tensor  # [B, W] block of each fill position (_FAR elsewhere)
    n_blocks: torch.Tensor  # [B] blocks of each row
    base_steps: torch.Tensor  # [B] steps every block of the row gets
    extra_steps: torch.Tensor  # [B] the first `extra_steps` blocks get one step more
    current: torch.Tensor  # [B] block being decoded (-1 before the first pass)
    step_in_block: torch.Tensor  # [B] passes done in the current block
    steps_in_block: torch.Tensor  # [B] passes the current block is given
    masked_at_block_entry: torch.Tensor  # [B] masks the current block held when the row entered it

    first_block: torch.Tensor | None = None  # [B] aligned blocks: the position // block_length of block 0
    block_length: int = 0  # aligned blocks: their length

    @classmethod
    def build(cls, fill: torch.Tensor, config: SamplerConfig, positions: torch.Tensor | None = None,
              aligned: int | None = None) -> "BlockState":
        """Blocks of `block_length` masked positions in order; with `aligned` (block-causal models), blocks of
        `block_length` (default `aligned`) positions counted from each row's start (`positions`), as the model's
        attention blocks are."""
        n_fill = fill.sum(1)
        first_block = None
        if aligned:
            block_len = config.block_length or aligned
            raw = torch.div(positions, block_len, rounding_mode="floor")
            first_block = torch.where(fill, raw, torch.full_like(raw, _FAR)).min(1).values
            block_id = torch.where(fill, raw - first_block.unsqueeze(1), torch.full_like(raw, _FAR))
            n_blocks = (torch.where(fill, block_id, torch.full_like(block_id, -1)).max(1).values + 1).clamp(min=1)
        else:
            rank = fill.long().cumsum(1) - 1
            block_len = config.block_length or int(n_fill.max())
            block_id = torch.where(fill, rank // block_len, torch.full_like(rank, _FAR))
            n_blocks = ((n_fill + block_len - 1) // block_len).clamp(min=1)
        zeros = torch.zeros_like(n_blocks)
        if config.steps_per_block:
            base, extra = torch.full_like(n_blocks, config.steps_per_block), zeros.clone()
        else:  # `steps` is split over a row's blocks; the first `steps % n_blocks` blocks get one step more.
            base, extra = config.steps // n_blocks, config.steps % n_blocks
        return cls(block_id, n_blocks, base, extra,
                   torch.full_like(n_blocks, -1), zeros.clone(), torch.ones_like(n_blocks), zeros.clone(),
                   first_block, block_len if aligned else 0)

    def columns(self, in_block: torch.Tensor, canvas: "Canvas") -> tuple[torch.Tensor, torch.Tensor]:
        """([B] first, [B] one-past-last) sequence column of each row's current block (aligned blocks: the whole
        attention-aligned span, prompt positions included)."""
        start_col = canvas.start
        if self.first_block is not None:
            begin = canvas.padding + (self.current + self.first_block) * self.block_length
            end = (begin + self.block_length).clamp(max=canvas.tokens.shape[1])
            return begin, end
        col = torch.arange(in_block.shape[1], device=in_block.device).unsqueeze(0) + start_col
        width = canvas.tokens.shape[1]
        begin = torch.where(in_block, col, torch.full_like(col, width)).min(1).values
        end = torch.where(in_block, col + 1, torch.zeros_like(col)).max(1).values
        return begin, end

    def advance(self, masked: torch.Tensor) -> torch.Tensor:
        """Move each row to the block of its first masked position; return [B, W] bool: that block's positions."""
        current = torch.where(masked, self.block_id, torch.full_like(self.block_id, _FAR)).min(1).values
        entering = current != self.current
        in_block = self.block_id == current.unsqueeze(1)
        self.masked_at_block_entry = torch.where(entering, (masked & in_block).sum(1), self.masked_at_block_entry)
        self.step_in_block = torch.where(entering, torch.zeros_like(self.step_in_block), self.step_in_block)
        budget = (self.base_steps + (current < self.extra_steps).long()).clamp(min=1)
        self.steps_in_block = torch.where(entering, budget, self.steps_in_block)
        self.current = current
        return in_block


def _as_rows(prompts: Sequence[Sequence[int]] | torch.Tensor) -> list[list[int]]:
    if isinstance(prompts, torch.Tensor):
        prompts = prompts.unsqueeze(0) if prompts.dim() == 1 else prompts
        return [row.tolist() for row in prompts]
    return [[int(t) for t in row] for row in prompts]


def _step_temperature(config: SamplerConfig, blocks: BlockState, sub: slice | torch.Tensor) -> float | torch.Tensor:
    """This pass's temperature: `config.temperature`, or per row [b] (float32) on the linear schedule to
    `temperature_end` over the block's S steps, end + (T - end) ((S - j) / S) at step j, in float32 as
    DiffusionGemma's LinearTemperatureScheduleLogitsProcessor computes it."""
    if config.temperature_end is None:
        return config.temperature
    remaining = (blocks.steps_in_block - blocks.step_in_block)[sub].to(torch.int32)
    fraction = remaining / blocks.steps_in_block[sub]
    return config.temperature_end + ((config.temperature - config.temperature_end) * fraction)


def _per_position(value: float | torch.Tensor, scored: torch.Tensor) -> float | torch.Tensor:
    """A per-row value [b] repeated for each scored position ([N, 1]); a float unchanged."""
    if not isinstance(value, torch.Tensor):
        return value
    return value.repeat_interleave(scored.sum(1)).unsqueeze(-1)


def _propose(logits: torch.Tensor, temperature: float | torch.Tensor, u: torch.Tensor,
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
    return _inverse_cdf(weights, u)


_CDF_CHUNK = 256


def _inverse_cdf(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
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
    noise_kind = getattr(denoiser, "noise", "mask")
    if noise_kind not in config.strategy_class.noises:
        kinds = {"mask": "masked-diffusion", "uniform": "uniform-state (Duo, DiffusionGemma)"}
        wanted = " and ".join(kinds[k] for k in config.strategy_class.noises)
        raise ConfigError(f"sampler {config.sampler!r} is for {wanted} models; {denoiser.name} is a "
                          f"{kinds[noise_kind]} model: use one of {', '.join(available_samplers(denoiser))}")
    strategy = config.strategy_class(config.options)
    if config.topk_remask != "off":
        strategy = TopKRemaskDecoder(strategy, config.topk_remask)
    schedule = get_schedule(config.schedule)
    rows = _as_rows(prompts)
    mask_id = denoiser.mask_token_id
    if not rows:
        return GenerationOutput([], [], 0, [], Trace([], mask_id) if trace else None)
    if seeds is not None and len(seeds) != len(rows):
        raise ConfigError(f"seeds has {len(seeds)} entries for {len(rows)} prompts; give one seed per prompt")
    attention_block = getattr(denoiser, "block_size", None)  # block-causal models decode their attention blocks
    if attention_block and config.block_length and config.block_length % attention_block:
        raise ConfigError(f"block_length={config.block_length} must be a multiple of the model's attention block "
                          f"({attention_block}); leave it unset to decode one attention block at a time")

    canvas_length = getattr(denoiser, "canvas_length", None)  # models that denoise fixed-size canvases
    if canvas_length and config.block_length not in (None, canvas_length):
        raise ConfigError(f"block_length={config.block_length}: {denoiser.name} denoises canvases of "
                          f"{canvas_length} tokens; leave block_length unset (or {canvas_length})")
    if canvas_length:
        config = config.replace(block_length=canvas_length)

    # === 1. canvas: prompts + masks, left-padded; the window of columns that hold anything to decode ===
    complete = (config.block_length or attention_block) if attention_block else None
    canvas = Canvas.build(rows, config.gen_length, denoiser, complete_block=complete, whole_canvases=canvas_length,
                          infill=getattr(denoiser, "infills", True))
    batch = len(rows)
    recorder = None
    if trace:
        recorder = Trace([r[p:] for r, p in zip(canvas.tokens.tolist(), canvas.padding.tolist())], mask_id)
    if not canvas.fill.any():
        return _finish(canvas, denoiser, config, 0, [0] * batch, recorder)
    tokens = canvas.window_tokens  # a view: what the model reads at the next pass
    fill = canvas.window(canvas.fill).clone()  # shrinks when EOS ends a row early
    generated_region = canvas.window(canvas.generated)

    # === 2. block state, forward passes (with or without cache), randomness, per-row memory ===
    positions = canvas.window(canvas.positions())
    blocks = BlockState.build(fill, config, positions, aligned=attention_block)
    if not config.steps_per_block and config.steps < int(blocks.n_blocks.max()):  # every block takes a pass
        raise ConfigError(f"steps={config.steps} is fewer than the {int(blocks.n_blocks.max())} blocks to decode "
                          f"(gen_length {config.gen_length}, block_length {config.block_length or attention_block}); "
                          f"give steps >= {int(blocks.n_blocks.max())} or a longer block_length")
    make_forward = getattr(denoiser, "make_forward", None)  # families with their own passes (encoder-decoder)
    forward = make_forward(canvas, config) if make_forward else ModelForward(denoiser, canvas, config.cache,
                                                                            config.cfg_scale)
    eos_id, eot_id = denoiser.eos_token_id, _eot_id(denoiser)
    row_seeds = seeds if seeds is not None else [config.seed] * batch
    rng = CounterRNG(torch.tensor([fold_seed(s) for s in row_seeds], device=tokens.device), positions)
    torch_rng = TorchRowGenerators(list(row_seeds), tokens.device) if config.rng == "torch" else None
    noise = canvas_noise(denoiser, fill, rng, torch_rng)
    if noise.uniform:  # every position to decode starts as noise (each block is drawn afresh when entered)
        tokens.copy_(torch.where(fill, noise.random_tokens(slice(None), fill, 0, _STREAM_START_NOISE,
                                                                  counter=True), tokens))
    surprise = _surprise_for(denoiser)
    confidence = torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device)
    row_nfe = torch.zeros(batch, dtype=torch.long, device=tokens.device)
    state: dict[str, torch.Tensor] = {}
    workspace = _Workspace()
    eos = denoiser.eos_token_id if config.stop_at_eos else None
    # every schedule ends within this many passes; the bound guards against a faulty strategy
    budget = config.steps_per_block * int(blocks.n_blocks.max()) if config.steps_per_block else config.steps
    max_steps = int(fill.sum(1).max()) + budget + int(blocks.n_blocks.max()) + strategy.extra_steps() + 1
    bar = tqdm(total=max_steps, desc=f"{config.sampler}", disable=not progress, leave=False)

    step = 0
    while True:
        # === 3. rows still decoding, and their current blocks ===
        masked = noise.noisy(tokens, fill)
        active = masked.any(1)
        if not active.any():
            break
        if step >= max_steps:
            raise RuntimeError(f"sampler {config.sampler!r} left masks after {step} steps; its step() must reveal "
                               f"every masked position by the last step of a block")
        previous_block = blocks.current.clone()
        in_block = blocks.advance(masked)
        entering = (blocks.current != previous_block) & active
        if noise.uniform and bool(entering.any()):  # a uniform-state block starts from fresh random tokens
            enter_rows = entering.nonzero().flatten()
            noise.enter(tokens, enter_rows, (masked & in_block)[enter_rows], step)
        rows_now = active.nonzero().flatten()
        sub = slice(None) if len(rows_now) == batch else rows_now
        masked_in_block = masked & in_block
        masked_now, eligible, block_now = masked[sub], masked_in_block[sub], (fill & in_block)[sub]
        scored = strategy.score_positions(masked_now, eligible, block_now, state, rows_now)
        if getattr(forward, "block_logits", False):  # self-conditioning reads the logits of the whole block
            scored = scored | block_now
        beyond = (scored & ~block_now).any(1)  # rows that need proposals outside their current block

        # === 4. forward: the model's logits where this pass needs them ===
        block_start, block_end = blocks.columns(in_block, canvas)
        refresh = (blocks.current != previous_block)[rows_now] | beyond
        passes = forward(rows_now, block_start[rows_now], block_end[rows_now], refresh)

        # === 5. proposals and their probabilities, at the positions the strategy can act on only ===
        flat_logits = _gather(passes, scored, workspace).float()
        lowest = torch.finfo(flat_logits.dtype).min
        temperature = _step_temperature(config, blocks, sub)
        if noise.uniform:
            if config.temperature > 0:  # uniform-state: every statistic reads the tempered distribution
                flat_logits = flat_logits / _per_position(temperature, scored)
                temperature = 1.0
            if noise.outside is not None:  # the diffusion's states are the noise vocabulary: nothing else proposed
                flat_logits[:, noise.outside] = lowest
        else:
            # the mask token is never proposed: the lowest finite logit (probability exactly 0, and no inf * 0 =
            # NaN in sums over the vocabulary such as the entropy)
            flat_logits[:, mask_id] = lowest
        if config.logits_eos_inf and eos_id is not None:
            flat_logits[:, eos_id] = lowest
        # log Z by hand (amax, then exp in place, then sum; the same value as torch.logsumexp): the exponentials are
        # kept for the strategies' vocabulary sums (entropy), which then cost a dot product instead of two passes
        row_max = flat_logits.amax(-1, keepdim=True)
        flat_exp = torch.sub(flat_logits, row_max, out=workspace.take("exp", len(flat_logits), flat_logits)).exp_()
        flat_sum_exp = flat_exp.sum(-1)
        flat_log_z = row_max.squeeze(-1) + flat_sum_exp.log()
        if torch_rng is not None and config.temperature > 0:
            scaled = flat_logits if noise.uniform else flat_logits / _per_position(temperature, scored)
            flat_x0 = torch_rng.multinomial(sub, scored, torch.softmax(scaled, dim=-1, dtype=torch.float32))
        else:
            flat_x0 = _propose(flat_logits, _per_position(temperature, scored),
                               rng.uniform(step, _STREAM_PROPOSAL)[sub][scored], flat_exp)
        if hasattr(forward, "condition"):  # self-conditioning: the next pass reads this pass's logits
            forward.condition(rows_now, scored, flat_logits)
        x0 = tokens[sub].clone()
        x0[scored] = flat_x0
        p_x0 = torch.zeros(scored.shape, dtype=flat_logits.dtype, device=tokens.device)
        p_x0[scored] = _probability(flat_logits, flat_log_z, flat_x0,
                                    eot_id if config.confidence_eos_eot_inf else None)

        # === 6. strategy step ===
        ctx = StepContext(
            step=step, x=tokens[sub], dense_logits=lambda: _dense(passes, None if noise.uniform else mask_id),
            scored=scored,
            flat_logits=flat_logits, flat_log_z=flat_log_z, flat_exp=flat_exp, flat_sum_exp=flat_sum_exp, x0=x0,
            p_x0=p_x0, masked=masked_now, eligible=eligible, block=block_now, fillable=fill[sub],
            confidence=confidence[sub],
            k=reveal_counts(schedule, blocks.masked_at_block_entry, blocks.step_in_block, blocks.steps_in_block,
                            masked_in_block.sum(1))[sub],
            block_step=blocks.step_in_block[sub], block_steps=blocks.steps_in_block[sub],
            threshold=config.threshold, rng=rng.rows(sub), mask_token_id=mask_id, surprise=surprise,
            rows=rows_now, batch_size=batch, state=state, order_noise=config.order_noise,
            order_noise_decay=config.order_noise_decay, uniform_noise=noise.uniform,
            random_tokens=(lambda where, _sub=sub, _step=step: noise.random_tokens(_sub, where, _step))
            if noise.uniform else None, noise_vocabulary=getattr(noise, "vocabulary", None))
        result = strategy.step(ctx)
        if result.noisy_tokens is not None and not noise.uniform:
            raise ConfigError(f"sampler {config.sampler!r} is for uniform-state models (Duo, DiffusionGemma); "
                              f"{denoiser.name} is a masked-diffusion model: use margin, top_prob, entropy, ...")

        # === 7. apply: reveal (the strategy's tokens or the proposals), re-noise, finish blocks, then EOS ===
        reveal = result.reveal & ctx.masked
        update = (result.update & ctx.fillable & ~ctx.masked) if result.update is not None else None
        changed = reveal if update is None else reveal | update
        new_tokens = torch.where(changed, x0 if result.tokens is None else result.tokens, ctx.x)
        if result.noisy_tokens is not None:  # uniform-state: positions that stay noisy take the strategy's tokens
            new_tokens = torch.where(ctx.masked & ~reveal, result.noisy_tokens, new_tokens)
        if result.finish is not None:  # the block is decided: its noisy positions settle on the final tokens
            done = result.finish.unsqueeze(-1) & ctx.masked & ctx.block & ~reveal
            final = ctx.argmax if result.final_tokens is None else result.final_tokens
            new_tokens = torch.where(done, final, new_tokens)
            reveal = reveal | done
            changed = changed | done
        confidence[sub] = torch.where(changed, p_x0, ctx.confidence)
        noise.settle(sub, reveal)
        remask = torch.zeros_like(reveal)
        if result.remask is not None:
            remask = result.remask & ctx.fillable & ~noise.noisy(new_tokens, ctx.fillable, sub)
            new_tokens = noise.renoise(new_tokens, sub, remask, step)
        forward.invalidate(sub, remask if update is None else remask | (update & (new_tokens != ctx.x)))
        tokens[sub] = new_tokens
        if eos is not None:
            fill &= ~_fill_after_eos(tokens, generated_region, eos, noise.noisy(tokens, fill))
        blocks.step_in_block[sub] += 1
        row_nfe[sub] += 1
        step += 1
        bar.update(1)

        # === 8. trace ===
        if recorder is not None:
            _record(recorder, step - 1, canvas, rows_now, reveal, remask, p_x0)
    bar.close()
    out = _finish(canvas, denoiser, config, forward.full_passes + forward.partial_passes, row_nfe.tolist(), recorder)
    out.nfe_full, out.nfe_partial = forward.full_passes, forward.partial_passes
    return out


def _probability(logits: torch.Tensor, log_z: torch.Tensor, tokens: torch.Tensor,
                 excluded: int | None) -> torch.Tensor:
    """p(token) under softmax(logits); with `excluded`, under the softmax without that token (0 for it)."""
    if excluded is not None:
        logits = logits.clone()
        logits[:, excluded] = torch.finfo(logits.dtype).min
        log_z = torch.logsumexp(logits, dim=-1)
    return torch.exp(logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - log_z)


def _eot_id(denoiser: Denoiser) -> int | None:
    """The tokenizer's end-of-turn token (LLaDA's <|eot_id|>), if it has one."""
    tok = denoiser.tokenizer
    if tok is None or not hasattr(tok, "convert_tokens_to_ids"):
        return None
    tid = tok.convert_tokens_to_ids("<|eot_id|>")
    return None if tid is None or tid == getattr(tok, "unk_token_id", None) else int(tid)


class _Workspace:
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


def _gather(passes: list[tuple[torch.Tensor, Logits]], positions: torch.Tensor,
            workspace: _Workspace) -> torch.Tensor:
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


def _dense(passes: list[tuple[torch.Tensor, Logits]], mask_id: int | None) -> torch.Tensor:
    """[b, W, V] logits of a pass (columns not computed: 0), the mask token at -inf (for `StepContext.logits`)."""
    first = passes[0][1]
    rows = sum(len(index) for index, _ in passes)
    out = first.values.new_zeros((rows, first.width, first.values.shape[-1]))
    for index, logits in passes:
        out[index] = logits.dense()
    if mask_id is not None:
        out[..., mask_id] = float("-inf")
    return out


def _record(trace: Trace, step: int, canvas: Canvas, rows: torch.Tensor, reveal: torch.Tensor,
            remask: torch.Tensor, p_x0: torch.Tensor) -> None:
    """Add one step to the trace, expanding this step's rows and window back to the whole batch."""

    def whole(t: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(canvas.tokens.shape, dtype=t.dtype, device=t.device)
        out[rows, canvas.start:] = t
        return out

    trace.record(step, canvas.tokens, canvas.padding, whole(reveal), whole(remask), whole(p_x0 * reveal))


def _fill_after_eos(tokens: torch.Tensor, generated: torch.Tensor, eos: int, noisy: torch.Tensor) -> torch.Tensor:
    """Set the generated positions still noisy after each row's first decided EOS to EOS; return the positions
    after it."""
    is_eos = generated & (tokens == eos) & ~noisy
    after = (is_eos.long().cumsum(1) - is_eos.long()) > 0
    tokens.masked_fill_(after & generated & noisy, eos)
    return after & generated


def _surprise_for(denoiser: Denoiser) -> torch.Tensor | None:
    if denoiser.surprise is None:
        return None
    s = denoiser.surprise.float().to(denoiser.device)
    vocab = denoiser.vocab_size
    if s.numel() < vocab:  # tokens the table does not know (added ids, the mask) carry no surprise
        s = torch.cat([s, s.new_zeros(vocab - s.numel())])
    return s


def _finish(canvas: Canvas, denoiser: Denoiser, config: SamplerConfig, nfe: int, row_nfe: list[int],
            trace: Trace | None) -> GenerationOutput:
    rows = canvas.tokens.cpu().tolist()
    kept = canvas.kept_end.tolist() if canvas.kept_end is not None else [len(r) for r in rows]
    seqs = [r[p:k] for r, p, k in zip(rows, canvas.padding.tolist(), kept)]
    gens = [r[e:k] for r, e, k in zip(rows, canvas.prompt_end.tolist(), kept)]
    if denoiser.eos_token_id is not None:  # the text ends at the first EOS (however the rest was decoded)
        gens = [g[: g.index(denoiser.eos_token_id)] if denoiser.eos_token_id in g else g for g in gens]
    return GenerationOutput(seqs, gens, nfe, row_nfe, trace)
