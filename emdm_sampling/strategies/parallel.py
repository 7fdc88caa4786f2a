"""The 2025-26 parallel decoders: credit decoding, hierarchical decoding, KLASS and Prophet's early commit.

Each commits several tokens per pass by its own rule and is tested against its reference code (dInfer's
`CreditThresholdParallelDecoder` and `HierarchyDecoder`, KLASS's `stable_confident_decode`) or, where the code has no
licence, against a transcription of the rule (Prophet). Per-row state lives in `StepContext.state`, so a row decodes
the same in any batch.
"""

from __future__ import annotations

from typing import Any

import torch

from emdm_core.errors import ConfigError

from ..proposals import inverse_cdf
from . import StepContext, StepResult, Strategy, rank_among, register_sampler, top_k


def _threshold_commit(confidence: torch.Tensor, eligible: torch.Tensor, threshold: float) -> torch.Tensor:
    """dInfer's threshold rule: commit every eligible position whose confidence is >= min(threshold, best - 1e-5)
    (so the best one, and any within 1e-5 of it, always)."""
    conf = confidence.masked_fill(~eligible, float("-inf"))
    bar = (conf.amax(-1, keepdim=True) - 1e-5).clamp(-1000, threshold)
    return (conf >= bar) & eligible


@register_sampler("credit")
class CreditDecoding(Strategy):
    """Credit decoding (Wang et al. 2025, arXiv 2510.06133; dInfer's `CreditThresholdParallelDecoder`): each
    masked position keeps an EMA "credit" of the tokens that were its top-1 prediction, credit[v] <- decay_beta *
    credit[v] (from the block's second step) + p_top1 ** boost_gamma at the top-1 token v, and decodes from the fused
    logits l + credit_alpha * log(1 + credit): a token that stays the favourite crosses the threshold sooner. With
    `threshold` it commits as dInfer does (every position with fused p >= min(threshold, best - 1e-5)); without, the
    schedule's top-k by fused p. The credit starts afresh in every block."""

    options = {"credit_alpha": 0.7, "boost_gamma": 0.2, "decay_beta": 0.8}
    honours = ("threshold", "schedule")

    @classmethod
    def check_options(cls, opt: dict[str, Any]) -> None:
        for name in cls.options:
            if not float(opt[name]) >= 0:
                raise ConfigError(f"{name} must be >= 0 (got {opt[name]})")

    def step(self, ctx: StepContext) -> StepResult:
        fused = self._fused_logits(ctx)
        flat_tokens = fused.argmax(-1)
        temperature = ctx.temperature_at_scored
        if temperature is not None:  # sampled at temperature T from the fused distribution, own stream
            weights = ((fused - fused.amax(-1, keepdim=True)) / temperature).exp_()
            flat_tokens = inverse_cdf(weights, ctx.uniform("credit_proposal")[ctx.scored])
        flat_p = torch.softmax(fused, dim=-1).gather(-1, flat_tokens.unsqueeze(-1)).squeeze(-1)
        tokens, confidence = ctx.x.clone(), ctx.scatter(flat_p)
        tokens[ctx.scored] = flat_tokens
        if ctx.threshold is not None:
            reveal = _threshold_commit(confidence, ctx.eligible, ctx.threshold)
        else:
            reveal = top_k(confidence, ctx.eligible, ctx.k)
        return StepResult(reveal=reveal, tokens=tokens)

    def _fused_logits(self, ctx: StepContext) -> torch.Tensor:
        """[N, V] the scored positions' logits plus credit_alpha * log(1 + credit), the credit updated with this
        pass's top-1 (kept sparse: one slot per distinct top-1 token a position has had in its block)."""
        n_rows, width = ctx.x.shape
        ids = ctx.load("credit_ids", torch.zeros(n_rows, width, 1, dtype=torch.long, device=ctx.x.device), -1)
        values = ctx.load("credit_values", torch.zeros(n_rows, width, 1, device=ctx.x.device), 0.0)
        fresh = (ctx.block_step == 0).view(-1, 1, 1)  # a new block: its credit starts empty
        ids = ids.masked_fill(fresh, -1)
        values = torch.where(fresh, torch.zeros_like(values), values * float(self.opt["decay_beta"]))
        probs = torch.softmax(ctx.flat_logits, dim=-1)
        top_p, top_id = probs.max(-1)
        boost = top_p.pow(float(self.opt["boost_gamma"]))
        flat_ids, flat_values = ids[ctx.scored], values[ctx.scored]
        hit = flat_ids == top_id.unsqueeze(-1)
        if bool((~hit.any(-1) & (flat_ids >= 0).all(-1)).any()):  # a new token and no free slot: one more slot
            ids = torch.cat([ids, torch.full_like(ids[..., :1], -1)], -1)
            values = torch.cat([values, torch.zeros_like(values[..., :1])], -1)
            flat_ids, flat_values = ids[ctx.scored], values[ctx.scored]
            hit = flat_ids == top_id.unsqueeze(-1)
        first_free = (flat_ids < 0).long().argmax(-1)
        slot = torch.where(hit.any(-1), hit.long().argmax(-1), first_free)
        flat_ids = flat_ids.scatter(-1, slot.unsqueeze(-1), top_id.unsqueeze(-1))
        flat_values = flat_values.scatter_add(-1, slot.unsqueeze(-1), boost.unsqueeze(-1))
        ids[ctx.scored], values[ctx.scored] = flat_ids, flat_values
        self._store(ctx, "credit_ids", ids)
        self._store(ctx, "credit_values", values)
        bonus = float(self.opt["credit_alpha"]) * torch.log(flat_values + 1)
        held = flat_ids >= 0
        return ctx.flat_logits.scatter_add(-1, flat_ids.clamp(min=0), torch.where(held, bonus, 0.0))

    @staticmethod
    def _store(ctx: StepContext, name: str, value: torch.Tensor) -> None:
        """Write rows of a state tensor whose last dimension may have grown (grown for the whole batch)."""
        held = ctx.state[name]
        if held.shape[-1] < value.shape[-1]:
            pad = value.shape[-1] - held.shape[-1]
            held = torch.cat([held, held.new_full((*held.shape[:-1], pad), -1 if held.dtype == torch.long else 0)],
                             -1)
            ctx.state[name] = held
        ctx.store(name, value)


@register_sampler("hierarchy")
class HierarchicalDecoding(Strategy):
    """Hierarchical decoding (dInfer's `HierarchyDecoder`): each pass commits, in every contiguous run of masked
    positions of the block, its most confident proposal if p > low_threshold; every proposal with p > `threshold`
    (when set); and the block's most confident proposal in any case. Tokens decided far apart first, so neighbours
    are not committed together. dInfer runs batch 1; here every row is its own."""

    options = {"low_threshold": 0.4}
    honours = ("threshold",)

    @classmethod
    def check_options(cls, opt: dict[str, Any]) -> None:
        if not 0.0 <= float(opt["low_threshold"]) <= 1.0:
            raise ConfigError(f"low_threshold must be in [0, 1] (got {opt['low_threshold']})")

    def step(self, ctx: StepContext) -> StepResult:
        eligible = ctx.eligible
        confidence = ctx.p_x0.masked_fill(~eligible, float("-inf"))
        starts = eligible & ~torch.nn.functional.pad(eligible[:, :-1], (1, 0), value=False)
        segment = (starts.long().cumsum(-1) - 1).clamp(min=0)
        best = torch.full_like(confidence, float("-inf")).scatter_reduce(-1, segment, confidence, "amax")
        commit = (confidence == best.gather(-1, segment)) & (confidence > float(self.opt["low_threshold"]))
        if ctx.threshold is not None:
            commit = commit | (confidence > ctx.threshold)
        top = torch.zeros_like(commit).scatter(-1, confidence.argmax(-1, keepdim=True), True)
        return StepResult(reveal=(commit | top) & eligible)


@register_sampler("klass")
class KLASS(Strategy):
    """KL-Adaptive Stability Sampling (Kim et al. 2025, arXiv 2511.05664; `stable_confident_decode`, alg=klass):
    a masked position of the block is committed when its confidence p(x0) > conf_threshold and the KL divergence
    between its predictive distributions at consecutive passes stayed below kl_threshold for the last
    kl_history_length passes (from the block's step kl_history_length - 1 on); when none is ready, the schedule's
    top-k by confidence. Every masked position's distribution is tracked at every pass (as the reference does, so
    a block's first steps compare with the passes before it): it scores the whole generation, and under
    cache=prefix|dual every pass is a full one."""

    options = {"conf_threshold": 0.9, "kl_threshold": 0.01, "kl_history_length": 2}
    honours = ("schedule",)

    @classmethod
    def check_options(cls, opt: dict[str, Any]) -> None:
        if not 0.0 <= float(opt["conf_threshold"]) <= 1.0:
            raise ConfigError(f"conf_threshold must be in [0, 1] (got {opt['conf_threshold']})")
        if not float(opt["kl_threshold"]) > 0:
            raise ConfigError(f"kl_threshold must be > 0 (got {opt['kl_threshold']})")
        if int(opt["kl_history_length"]) < 1:
            raise ConfigError(f"kl_history_length must be >= 1 (got {opt['kl_history_length']})")

    def score_positions(self, masked, eligible, block, state, rows):
        return masked

    def step(self, ctx: StepContext) -> StepResult:
        history = int(self.opt["kl_history_length"])
        n_rows, width = ctx.x.shape
        vocab = ctx.flat_logits.shape[-1]
        previous = ctx.load("klass_p", torch.zeros(n_rows, width, vocab, dtype=torch.float64, device=ctx.x.device))
        kls = ctx.load("klass_kl", torch.zeros(n_rows, width, history, dtype=torch.float64, device=ctx.x.device))
        p_now = torch.softmax(ctx.flat_logits.double(), dim=-1)
        eps = 1e-12
        kl = (p_now * (torch.log(p_now + eps) - torch.log(previous[ctx.scored] + eps))).sum(-1)
        kls[ctx.scored] = torch.cat([kls[ctx.scored][:, 1:], kl.unsqueeze(-1)], -1)
        previous[ctx.scored] = p_now
        ctx.store("klass_p", previous)
        ctx.store("klass_kl", kls)
        confidence = ctx.scatter(p_now.gather(-1, ctx.x0[ctx.scored].unsqueeze(-1)).squeeze(-1))
        stable = (kls < float(self.opt["kl_threshold"])).all(-1) & (ctx.block_step >= history - 1).unsqueeze(-1)
        ready = stable & (confidence > float(self.opt["conf_threshold"])) & ctx.eligible
        fallback = top_k(confidence, ctx.eligible, ctx.k)
        return StepResult(reveal=torch.where(ready.any(-1, keepdim=True), ready, fallback))


@register_sampler("prophet")
class Prophet(Strategy):
    """Prophet's early commit (Li et al. 2025, "Diffusion language models know the answer before decoding", arXiv
    2508.19982; pixeli99/Prophet `generate_earlyexit.py`, no licence: the rule as described, see the oracles
    README): LLaDA's low-confidence decoding (the schedule's top-k by p(x0) in the block), and at every pass the mean
    gap between the top-1 and top-2 logits over the answer positions (gen-relative answer_start, answer_length of
    them, clipped to the generation); once it reaches 7.5 (progress < 0.33), 5.0 (< 0.67) or 2.5 (after), progress
    being the pass count over `steps`, every remaining masked position of the generation takes its proposal and
    decoding stops. It scores the whole generation each pass (use cache=none)."""

    options = {"answer_start": 0, "answer_length": 5, "gap_thresholds": "7.5,5.0,2.5"}
    honours = ("schedule",)

    @classmethod
    def check_options(cls, opt: dict[str, Any]) -> None:
        if int(opt["answer_start"]) < 0 or int(opt["answer_length"]) < 1:
            raise ConfigError(f"answer_start must be >= 0 and answer_length >= 1 (got {opt['answer_start']}, "
                              f"{opt['answer_length']})")
        try:
            gaps = [float(v) for v in str(opt["gap_thresholds"]).split(",")]
        except ValueError:
            gaps = []
        if len(gaps) != 3:
            raise ConfigError(f"gap_thresholds must be three numbers, e.g. 7.5,5.0,2.5 (got {opt['gap_thresholds']!r})")

    def score_positions(self, masked, eligible, block, state, rows):
        return torch.ones_like(masked)  # the gap is read at decided answer positions too

    def step(self, ctx: StepContext) -> StepResult:
        reveal = top_k(ctx.p_x0, ctx.eligible, ctx.k)
        top2 = ctx.top_logits(2)
        gap = top2[..., 0] - top2[..., 1]
        gen = ctx.fillable.long().cumsum(-1) - 1  # gen-relative position of each generated column
        start = int(self.opt["answer_start"])
        answer = ctx.fillable & (gen >= start) & (gen < start + int(self.opt["answer_length"]))
        mean_gap = (gap * answer).sum(-1) / answer.sum(-1).clamp(min=1)
        progress = (ctx.step + 1) / ctx.total_steps  # every row takes part in every pass until it is done
        high, mid, low = (float(v) for v in str(self.opt["gap_thresholds"]).split(","))
        bar = high if progress < 0.33 else mid if progress < 0.67 else low
        exit_now = answer.any(-1) & (mean_gap >= bar)
        return StepResult(reveal=torch.where(exit_now.unsqueeze(-1), ctx.masked, reveal))


@register_sampler("wino")
class WINO(Strategy):
    """WINO, wide-in narrow-out (Hong et al. 2025, arXiv 2507.18578; Feng-Hong/WINO-DLLM `decoding_wino`, no
    licence: the rule as the oracles README transcribes it). Each pass also runs "shadow" mask slots for the block
    (in the same model call: `Denoiser.verified_logits`), slot j predicting the block's j-th token with it hidden.
    Wide in: commit every masked block position with p > wino_threshold (at most min(max(int(0.7 m), 5), 20) of
    them, m the block's masks, the most confident first; none: the best one). Narrow out: when more than one was
    committed, re-mask the earlier-committed block tokens whose shadow probability is < threshold_back (if they are
    as many as the previous pass committed, only that number minus one, the lowest). Needs cache=none and a backbone
    family with shadow verification (llada). Paper (GSM8K): wino_threshold 0.6, threshold_back 0.9, block 128."""

    options = {"wino_threshold": 0.6, "threshold_back": 0.9}
    honours = ()
    verifies = True
    remasks = True

    @classmethod
    def check_options(cls, opt: dict[str, Any]) -> None:
        for name in cls.options:
            if not 0.0 <= float(opt[name]) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1] (got {opt[name]})")

    def step(self, ctx: StepContext) -> StepResult:
        eligible, confidence = ctx.eligible, ctx.p_x0.double().masked_fill(~ctx.eligible, float("-inf"))
        fresh = (ctx.block_step == 0).unsqueeze(-1)
        verifying = ctx.load("wino_verifying", eligible, False) & ~fresh & ctx.block & ~ctx.masked
        last_accept = torch.where(fresh.squeeze(-1), 30, ctx.load("wino_last", ctx.k.unsqueeze(-1), 30).squeeze(-1))
        most = (eligible.sum(-1).double() * 0.7).long().clamp(min=5, max=20)
        wide = eligible & (confidence > float(self.opt["wino_threshold"]))
        accept = wide & (rank_among(confidence, wide) < most.unsqueeze(-1))
        best = eligible & (rank_among(confidence, eligible) == 0)
        accept = torch.where(accept.any(-1, keepdim=True), accept, best)
        accepted = accept.sum(-1)
        low = verifying & (ctx.verification < float(self.opt["threshold_back"]))
        capped = low & (rank_among(-ctx.verification, low) < (last_accept - 1).clamp(min=0).unsqueeze(-1))
        remask = torch.where((low.sum(-1) >= last_accept).unsqueeze(-1), capped, low) & (accepted > 1).unsqueeze(-1)
        ctx.store("wino_verifying", (verifying & ~remask) | accept)
        ctx.store("wino_last", accepted.unsqueeze(-1))
        return StepResult(reveal=accept, remask=remask)
