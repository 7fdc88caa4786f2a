"""The decode session: one decoding of a batch as an object with named phases.

    session = DecodeSession(denoiser, rows, plan, seeds)      # start: canvas, blocks, noise, randomness
    while session.step():                                     # per pass: rows and blocks -> forward -> proposals
        pass                                                  #   -> strategy -> apply -> record
    out = session.result()

Every strategy, schedule, cache mode and noise (masked or uniform-state) runs through these same phases; what
differs is a registered strategy, the `Forward` (emdm's `ModelForward` or a family's own) and the noise object.
Everything is per row and vectorised, so a row decodes the same way whatever else is in its batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from emdm_core.contract import Forward, Logits
from emdm_core.progress import progress_bar
from emdm_models.denoiser import Denoiser

from .canvas import BlockState, Canvas
from .forward import ModelForward
from .noise import canvas_noise
from .output import GenerationOutput
from .plan import DecodePlan
from .proposals import Workspace, dense, gather, per_position, probability, propose, step_temperature
from .record import DecodeRecord, StepRecord
from .rng import CounterRNG, TorchRowGenerators, fold_seed
from .schedules import get_schedule, reveal_counts
from .strategies import StepContext, StepResult
from .strategies.remasking import TopKRemaskDecoder
from .trace import Trace


@dataclass
class _Pass:
    """What one pass works on: the rows still decoding and their current blocks (window columns)."""

    rows: torch.Tensor  # [b] batch rows taking part
    sub: slice | torch.Tensor  # how to index them (all rows: a slice, so tensors stay views)
    masked: torch.Tensor  # [b, W] positions still noisy
    eligible: torch.Tensor  # [b, W] noisy positions of the current block
    block: torch.Tensor  # [b, W] all positions of the current block
    scored: torch.Tensor  # [b, W] where proposals and statistics are computed
    entering: torch.Tensor  # [b] rows that entered a new block this pass
    masked_in_block: torch.Tensor  # [B, W] (whole batch: the schedule's reveal counts)


class DecodeSession:
    """Decode `rows` (token-id lists) under a checked `DecodePlan`; see the module docstring."""

    def __init__(self, denoiser: Denoiser, rows: list[list[int]], plan: DecodePlan,
                 seeds: Sequence[int] | None = None, trace: bool = False, record: bool = False,
                 progress: bool = False):
        self.denoiser, self.plan, self.config, self.contract = denoiser, plan, plan.config, plan.contract
        self._start(rows, seeds, trace, record, progress)

    # === start: canvas, blocks, forward passes, noise, randomness ===
    def _start(self, rows: list[list[int]], seeds: Sequence[int] | None, trace: bool, record: bool,
               progress: bool) -> None:
        den, config, contract = self.denoiser, self.config, self.contract
        self.strategy = config.strategy_class(config.options)
        if config.topk_remask != "off":
            self.strategy = TopKRemaskDecoder(self.strategy, config.topk_remask)
        self.schedule = get_schedule(config.schedule)
        block = contract.attention_block
        self.canvas = canvas = Canvas.build(rows, config.gen_length, den, infill=contract.infills,
                                            complete_block=(config.block_length or block) if block else None,
                                            whole_canvases=contract.canvas_length)
        self.batch = len(rows)
        self.tokens = canvas.window_tokens  # a view: what the model reads at the next pass
        self.fill = canvas.window(canvas.fill).clone()  # shrinks when EOS ends a row early
        self.generated_region = canvas.window(canvas.generated)
        positions = canvas.window(canvas.positions())
        self.trace = Trace([r[p:] for r, p in zip(canvas.tokens.tolist(), canvas.padding.tolist())],
                           den.mask_token_id) if trace else None
        self.row_nfe = torch.zeros(self.batch, dtype=torch.long, device=self.tokens.device)
        self.row_nfe_full = torch.zeros_like(self.row_nfe)  # of row_nfe: the passes that were full ones
        self.record: DecodeRecord | None = None
        self.passes, self.max_steps = 0, 0
        self.forward: Forward | None = None
        if not bool(self.fill.any()):
            return
        self.blocks = BlockState.build(self.fill, config, positions, aligned=block)
        self.forward = (contract.own_forward(canvas, config) if contract.own_forward is not None
                        else ModelForward(den, canvas, self.plan.cache, config.cfg_scale, block,
                                          verify=self.strategy.verifies))
        row_seeds = list(seeds) if seeds is not None else [config.seed] * self.batch
        self.rng = CounterRNG(torch.tensor([fold_seed(s) for s in row_seeds], device=self.tokens.device), positions)
        self.torch_rng = TorchRowGenerators(row_seeds, self.tokens.device) if config.rng == "torch" else None
        self.noise = canvas_noise(contract, den, self.fill, self.rng, self.torch_rng)
        self.noise.start(self.tokens, self.fill)
        self.surprise = _surprise_for(den)
        self.confidence = torch.zeros(self.tokens.shape, dtype=torch.float32, device=self.tokens.device)
        self.state: dict[str, torch.Tensor] = {}  # the strategy's per-row memory
        self.workspace = Workspace()
        self.eos = den.eos_token_id if config.stop_at_eos else None
        if record:
            self.record = DecodeRecord(canvas.start, canvas.padding.clone(), self.tokens.clone())
        # every schedule ends within this many passes; the bound guards against a faulty strategy
        n_blocks = int(self.blocks.n_blocks.max())
        budget = config.steps_per_block * n_blocks if config.steps_per_block else config.steps
        self.max_steps = int(self.fill.sum(1).max()) + budget + n_blocks + self.strategy.extra_steps() + 1
        self.bar = progress_bar(total=self.max_steps, desc=config.sampler, enabled=progress, leave=False)

    # === one pass ===
    def step(self) -> bool:
        """Run one forward pass and its update; False (and nothing done) once every row is decoded."""
        if self.forward is None:
            return False
        now = self._rows_and_blocks()
        if now is None:
            self.bar.close()
            return False
        before = (self.forward.full_passes, self.forward.partial_passes)
        passes = self._forward(now)
        ctx = self._proposals(now, passes)
        result = self.strategy.step(ctx)
        tokens_before = ctx.x.clone() if self.record is not None else None
        decided, remask = self._apply(now, ctx, result)
        self._record(now, ctx, tokens_before, decided, remask, before)
        return True

    # --- rows and blocks -------------------------------------------------------------------------------------
    def _rows_and_blocks(self) -> _Pass | None:
        """The rows still decoding and their current blocks (rows entering a block get their noise); None when done."""
        masked = self.noise.noisy(self.tokens, self.fill)
        active = masked.any(1)
        if not active.any():
            return None
        if self.passes >= self.max_steps:
            raise RuntimeError(f"sampler {self.config.sampler!r} left masks after {self.passes} steps; its step() "
                               f"must reveal every masked position by the last step of a block")
        blocks = self.blocks
        previous_block = blocks.current.clone()
        self.in_block = in_block = blocks.advance(masked)
        entering = blocks.current != previous_block
        self.noise.enter(self.tokens, entering & active, masked & in_block, self.passes)
        rows = active.nonzero().flatten()
        sub = slice(None) if len(rows) == self.batch else rows
        masked_in_block = masked & in_block
        masked_now, eligible, block_now = masked[sub], masked_in_block[sub], (self.fill & in_block)[sub]
        scored = self.strategy.score_positions(masked_now, eligible, block_now, self.state, rows)
        if self.contract.self_conditioning:  # each pass reads the previous pass's logits of the whole block
            scored = scored | block_now
        return _Pass(rows, sub, masked_now, eligible, block_now, scored, entering[rows], masked_in_block)

    # --- forward ---------------------------------------------------------------------------------------------
    def _forward(self, now: _Pass) -> list[tuple[torch.Tensor, Logits]]:
        """The model's logits where this pass needs them (a row that needs proposals beyond its block, or enters
        a block, refreshes its whole sequence under a cache)."""
        block_start, block_end = self.blocks.columns(self.in_block, self.canvas)
        beyond = (now.scored & ~now.block).any(1)
        passes = self.forward(now.rows, block_start[now.rows], block_end[now.rows], now.entering | beyond)
        self.row_nfe_full[now.rows] += self.forward.full_rows.long()
        return passes

    # --- proposals -------------------------------------------------------------------------------------------
    def _proposals(self, now: _Pass, passes: list[tuple[torch.Tensor, Logits]]) -> StepContext:
        """Proposals and their probabilities at the scored positions, and the strategy's view of the step."""
        config, sub, scored, step = self.config, now.sub, now.scored, self.passes
        flat_logits = gather(passes, scored, self.workspace).float()
        temperature = step_temperature(config, self.blocks, sub)
        flat_logits, temperature = self.noise.proposal_logits(flat_logits, temperature, config.temperature > 0,
                                                              scored)
        if config.logits_eos_inf and self.denoiser.eos_token_id is not None:
            flat_logits[:, self.denoiser.eos_token_id] = torch.finfo(flat_logits.dtype).min
        # log Z by hand (amax, then exp in place, then sum; the same value as torch.logsumexp): the exponentials are
        # kept for the strategies' vocabulary sums (entropy), which then cost a dot product instead of two passes
        row_max = flat_logits.amax(-1, keepdim=True)
        flat_exp = torch.sub(flat_logits, row_max, out=self.workspace.take("exp", len(flat_logits), flat_logits))
        flat_exp = flat_exp.exp_()
        flat_sum_exp = flat_exp.sum(-1)
        flat_log_z = row_max.squeeze(-1) + flat_sum_exp.log()
        at_scored = per_position(temperature, scored)
        if self.torch_rng is not None and config.temperature > 0:
            probs = torch.softmax(flat_logits / at_scored, dim=-1, dtype=torch.float32)
            flat_x0 = self.torch_rng.multinomial(sub, scored, probs)
        else:
            flat_x0 = propose(flat_logits, at_scored, self.rng.uniform(step, "proposal")[sub][scored], flat_exp)
        self.forward.condition(now.rows, scored, flat_logits)  # self-conditioning: the next pass reads these
        x0 = self.tokens[sub].clone()
        x0[scored] = flat_x0
        p_x0 = torch.zeros(scored.shape, dtype=flat_logits.dtype, device=self.tokens.device)
        eot = self.contract.eot_token_id if config.confidence_eos_eot_inf else None
        p_x0[scored] = probability(flat_logits, flat_log_z, flat_x0, eot)
        blocks, excluded = self.blocks, self.noise.excluded_token
        return StepContext(
            step=step, x=self.tokens[sub], dense_logits=lambda: dense(passes, excluded), scored=scored,
            flat_logits=flat_logits, flat_log_z=flat_log_z, flat_exp=flat_exp, flat_sum_exp=flat_sum_exp, x0=x0,
            p_x0=p_x0, masked=now.masked, eligible=now.eligible, block=now.block, fillable=self.fill[sub],
            confidence=self.confidence[sub],
            k=reveal_counts(self.schedule, blocks.masked_at_block_entry, blocks.step_in_block, blocks.steps_in_block,
                            now.masked_in_block.sum(1))[sub],
            block_step=blocks.step_in_block[sub], block_steps=blocks.steps_in_block[sub],
            threshold=config.threshold, rng=self.rng.rows(sub), mask_token_id=self.denoiser.mask_token_id,
            surprise=self.surprise, rows=now.rows, batch_size=self.batch, state=self.state,
            order_noise=config.order_noise, order_noise_decay=config.order_noise_decay,
            uniform_noise=self.noise.uniform, random_tokens=self.noise.drawer(sub, step),
            noise_vocabulary=self.noise.vocabulary,
            temperature_at_scored=at_scored if config.temperature > 0 else None, total_steps=config.steps,
            verification=self._verification(now) if self.strategy.verifies else None)

    def _verification(self, now: _Pass) -> torch.Tensor:
        """[b, W] p(current token) at each block position from the pass's shadow logits (float64 softmax, the mask
        token excluded as in every proposal)."""
        block_start, shadow = self.forward.verification
        tokens = self.tokens[now.sub]
        slot = torch.arange(shadow.shape[1], device=tokens.device)
        column = block_start.unsqueeze(1) - self.canvas.start + slot  # [b, S] window column of each slot
        valid = (column < tokens.shape[1]) & (slot.unsqueeze(0) < now.block.sum(-1, keepdim=True))
        current = tokens.gather(1, column.clamp(max=tokens.shape[1] - 1))
        shadow = shadow.double()
        shadow[..., self.denoiser.mask_token_id] = float("-inf")  # as every proposal: the mask is no token
        p = torch.softmax(shadow, -1).gather(-1, current.unsqueeze(-1)).squeeze(-1)
        out = torch.zeros(tokens.shape, dtype=torch.float64, device=tokens.device)
        row = torch.arange(len(tokens), device=tokens.device).unsqueeze(1).expand_as(column)
        out[row[valid], column[valid]] = p[valid]
        return out * now.block

    # --- apply -----------------------------------------------------------------------------------------------
    def _apply(self, now: _Pass, ctx: StepContext, result: StepResult) -> tuple[torch.Tensor, torch.Tensor]:
        """Reveal (the strategy's tokens or the proposals), update, keep noisy, finish blocks, re-noise, then EOS;
        return ([b, W] decided, [b, W] re-noised) positions."""
        sub, noise = now.sub, self.noise
        reveal = result.reveal & ctx.masked
        update = (result.update & ctx.fillable & ~ctx.masked) if result.update is not None else None
        changed = reveal if update is None else reveal | update
        new_tokens = torch.where(changed, ctx.x0 if result.tokens is None else result.tokens, ctx.x)
        new_tokens = noise.keep_noisy(new_tokens, ctx.masked & ~reveal, result.noisy_tokens, self.config.sampler,
                                      self.contract.family)
        if result.finish is not None:  # the block is decided: its noisy positions settle on the final tokens
            done = result.finish.unsqueeze(-1) & ctx.masked & ctx.block & ~reveal
            final = ctx.argmax if result.final_tokens is None else result.final_tokens
            new_tokens = torch.where(done, final, new_tokens)
            reveal = reveal | done
            changed = changed | done
        self.confidence[sub] = torch.where(changed, ctx.p_x0, ctx.confidence)
        noise.settle(sub, reveal)
        remask = torch.zeros_like(reveal)
        if result.remask is not None:
            remask = result.remask & ctx.fillable & ~noise.noisy(new_tokens, ctx.fillable, sub)
            new_tokens = noise.renoise(new_tokens, sub, remask, self.passes)
        self.forward.invalidate(sub, remask if update is None else remask | (update & (new_tokens != ctx.x)))
        self.tokens[sub] = new_tokens
        if self.eos is not None:
            self.fill &= ~_fill_after_eos(self.tokens, self.generated_region, self.eos,
                                          noise.noisy(self.tokens, self.fill))
        self.blocks.step_in_block[sub] += 1
        self.row_nfe[sub] += 1
        self.passes += 1
        self.bar.update(1)
        if self.trace is not None:
            self._trace(now, reveal, remask, ctx.p_x0)
        return changed & ~remask, remask

    # --- record ----------------------------------------------------------------------------------------------
    def _record(self, now: _Pass, ctx: StepContext, tokens_before: torch.Tensor | None, decided: torch.Tensor,
                remask: torch.Tensor, before: tuple[int, int]) -> None:
        """Add this pass to the per-step record (when asked for): decisions with their log-probabilities."""
        if self.record is None:
            return
        tokens = self.tokens[now.sub].clone()
        logprob = torch.zeros(decided.shape, dtype=torch.float32, device=tokens.device)
        taken = decided & ctx.scored
        if bool(taken.any()):
            index = (ctx.scored.long().flatten().cumsum(0) - 1).view_as(decided)[taken]
            logprob[taken] = ctx.flat_logits[index, tokens[taken]] - ctx.flat_log_z[index]
        self.record.add(StepRecord(
            self.passes - 1, now.rows.clone(), tokens_before, tokens, decided, remask, logprob,
            self.forward.full_passes - before[0], self.forward.partial_passes - before[1]))

    def _trace(self, now: _Pass, reveal: torch.Tensor, remask: torch.Tensor, p_x0: torch.Tensor) -> None:
        """Add one step to the trace, expanding this step's rows and window back to the whole batch."""
        canvas = self.canvas

        def whole(t: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(canvas.tokens.shape, dtype=t.dtype, device=t.device)
            out[now.rows, canvas.start:] = t
            return out

        self.trace.record(self.passes - 1, canvas.tokens, canvas.padding, whole(reveal), whole(remask),
                          whole(p_x0 * reveal))

    # === result ===
    def result(self) -> GenerationOutput:
        """Sequences (prompt + generation, no padding), the generation cut at the first EOS, and the costs."""
        canvas, eos = self.canvas, self.denoiser.eos_token_id
        rows = canvas.tokens.cpu().tolist()
        kept = canvas.kept_end.tolist() if canvas.kept_end is not None else [len(r) for r in rows]
        seqs = [r[p:k] for r, p, k in zip(rows, canvas.padding.tolist(), kept)]
        gens = [r[e:k] for r, e, k in zip(rows, canvas.prompt_end.tolist(), kept)]
        if eos is not None:  # the text ends at the first EOS (however the rest was decoded)
            gens = [g[: g.index(eos)] if eos in g else g for g in gens]
        full = self.forward.full_passes if self.forward is not None else 0
        partial = self.forward.partial_passes if self.forward is not None else 0
        return GenerationOutput(seqs, gens, full + partial, self.row_nfe.tolist(), self.trace, full, partial,
                                self.record, self.row_nfe_full.tolist())


def _fill_after_eos(tokens: torch.Tensor, generated: torch.Tensor, eos: int, noisy: torch.Tensor) -> torch.Tensor:
    """Set the generated positions still noisy after each row's first decided EOS to EOS; return the positions
    after it."""
    is_eos = generated & (tokens == eos) & ~noisy
    after = (is_eos.long().cumsum(1) - is_eos.long()) > 0
    tokens.masked_fill_(after & generated & noisy, eos)
    return after & generated


def _surprise_for(denoiser: Denoiser) -> torch.Tensor | None:
    """The checkpoint's surprise table on the model's device, padded with 0 to the vocabulary."""
    if denoiser.surprise is None:
        return None
    s = denoiser.surprise.float().to(denoiser.device)
    vocab = denoiser.vocab_size
    if s.numel() < vocab:  # tokens the table does not know (added ids, the mask) carry no surprise
        s = torch.cat([s, s.new_zeros(vocab - s.numel())])
    return s
