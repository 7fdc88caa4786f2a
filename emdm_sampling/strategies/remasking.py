"""Strategies whose revealed tokens can change again: ReMDM remasking and EAGS Gibbs refinement."""

from __future__ import annotations

from typing import Any

import torch

from emdm_core.errors import ConfigError
from . import ORDERING_OPTIONS, StepContext, StepResult, Strategy, block_decay, register_sampler, top_k


def remdm_rates(schedule: str, eta: float, block_step: torch.Tensor, block_steps: torch.Tensor,
                revealed: torch.Tensor, confidence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ReMDM's per-token probabilities at step j of S (alpha_t = j / S, alpha_s = (j + 1) / S), float64:
    ([B, W] re-mask probability of each revealed token, [B, W or 1] reveal probability of a masked token).

    As MDLM-ReMDM's `_ddpm_caching_update` computes them: sigma_max = min(1, (1 - alpha_s) / alpha_t) (1 at
    alpha_t = 0); `cap` sigma = min(eta, sigma_max) (eta at alpha_t = 0), `rescale` sigma = eta * sigma_max, `conf`
    sigma_i = softmax(-confidence)_i * sigma_max over the revealed tokens (no eta); a masked token is revealed with
    probability (alpha_s - (1 - sigma) alpha_t) / (1 - alpha_t), sigma being its own (the scalar for cap / rescale,
    0 for conf). `conf_eta` is emdm's variant: eta * sigma_max spread over the revealed tokens by
    n_revealed * softmax(-confidence), the reveal rate raised by their mean sigma so the masked fraction stays on
    schedule."""
    j = block_step.double().unsqueeze(-1)
    s = block_steps.double().unsqueeze(-1)
    alpha_t, alpha_s = j / s, ((j + 1) / s).clamp(max=1.0)
    positive = alpha_t > 0
    ratio = (1 - alpha_s) / alpha_t.clamp_min(1e-12)
    sigma_max = torch.where(positive, ratio.clamp(max=1.0), torch.ones_like(alpha_t))
    scores = (-confidence.double()).masked_fill(~revealed, float("-inf"))
    softmax = torch.nan_to_num(torch.softmax(scores, dim=-1))
    if schedule == "cap":
        sigma = torch.where(positive, torch.minimum(torch.full_like(ratio, eta), ratio), torch.full_like(ratio, eta))
    elif schedule == "rescale":
        sigma = eta * sigma_max
    elif schedule == "conf":
        sigma = softmax * sigma_max
    else:  # conf_eta
        sigma_max = torch.where(positive, sigma_max, torch.zeros_like(sigma_max))
        sigma = (eta * sigma_max * softmax * revealed.sum(-1, keepdim=True)).clamp(max=1.0)
    remask = sigma.expand_as(confidence).masked_fill(~revealed, 0.0)
    if schedule == "conf":
        masked_sigma = torch.zeros_like(alpha_t)
    elif schedule == "conf_eta":
        masked_sigma = remask.sum(-1, keepdim=True) / revealed.sum(-1, keepdim=True).clamp_min(1)
    else:
        masked_sigma = sigma
    reveal = (alpha_s - alpha_t + masked_sigma * alpha_t) / (1 - alpha_t).clamp_min(1e-12)
    return remask, reveal.clamp(0.0, 1.0)


@register_sampler("remdm")
class ReMDM(Strategy):
    """ReMDM remasking (Wang et al. 2025, "Remasking Discrete Diffusion Models with Inference-Time Scaling",
    arXiv 2503.00307). Within each block, time runs t = 1 - j/S over its S steps (alpha_t = 1 - t). At each step a
    revealed (generated) token of the block is re-masked with probability sigma and a masked token is revealed
    with probability (alpha_s - (1 - sigma) alpha_t) / (1 - alpha_t), as MDLM-ReMDM's sampler computes them
    (`remdm_rates`: equal to its `_ddpm_caching_update` to 1e-15, tested against it).

    remdm_schedule: `cap` sigma = min(eta, sigma_max); `rescale` sigma = eta * sigma_max; `conf` (the reference's)
    sigma_i = sigma_max softmax(-confidence)_i over the revealed tokens, the least confident (lowest p when revealed)
    re-masked most, masked tokens revealed at the plain MDLM rate (no eta); `conf_eta` (emdm's variant) scales
    that spread by eta and the number of revealed tokens and raises the reveal rate to keep the masked fraction on
    schedule. Re-masking is confined to the row's current block (semi-autoregressive semantics), and the last step
    of a block reveals everything left. Proposals use `temperature` (ReMDM samples: use > 0).
    """

    options = {"remdm_schedule": "cap", "eta": 0.04}
    remasks = True
    honours = ()  # its own reveal rate: no threshold, schedule or ordering noise

    @classmethod
    def check_options(cls, opt: dict[str, Any]) -> None:
        if opt["remdm_schedule"] not in ("cap", "rescale", "conf", "conf_eta"):
            raise ConfigError(f"remdm_schedule must be cap, rescale, conf or conf_eta (got "
                              f"{opt['remdm_schedule']!r})")
        if not 0.0 <= float(opt["eta"]) <= 1.0:
            raise ConfigError(f"eta must be in [0, 1] (got {opt['eta']})")
        if opt["remdm_schedule"] == "conf" and float(opt["eta"]) != cls.options["eta"]:
            raise ConfigError(f"remdm_schedule=conf (the reference's) uses no eta (got eta={opt['eta']}); drop eta, "
                              f"or use remdm_schedule=conf_eta (emdm's variant, scaled by eta)")

    def step(self, ctx: StepContext) -> StepResult:
        revealed = ctx.block & ctx.fillable & ~ctx.masked
        p_remask, p_reveal = remdm_rates(self.opt["remdm_schedule"], float(self.opt["eta"]), ctx.block_step,
                                         ctx.block_steps, revealed, ctx.confidence)
        remask = revealed & (ctx.uniform("remdm_remask") < p_remask)
        reveal = ctx.eligible & (ctx.uniform("remdm_reveal") < p_reveal)
        return StepResult(reveal=reveal, remask=remask)


@register_sampler("eags")
class EAGS(Strategy):
    """Entropy-Adaptive Gibbs Sampling (Koh et al. 2024, Diffusion-EAGS, arXiv 2411.06438; seed 001).

    Decoding reveals the highest-entropy masked positions first (the paper's priority: the most uncertain tokens
    are settled while the context is still open). Then `gibbs_steps` Gibbs sweeps refine the result: each sweep
    re-masks the `gibbs_fraction` of generated positions whose tokens were least certain (highest entropy when
    last sampled) and re-samples them all in one forward pass, conditioned on every other token. Each sweep costs
    one forward pass. The paper's exact update schedule is not public; this is emdm's reading of it.
    """

    options = {"gibbs_steps": 2, "gibbs_fraction": 0.1}
    remasks = True
    honours = ORDERING_OPTIONS  # decoding goes through `select`; its own step, so no topk_remask

    @classmethod
    def check_options(cls, opt: dict[str, Any]) -> None:
        if int(opt["gibbs_steps"]) < 0:
            raise ConfigError(f"gibbs_steps must be >= 0 (got {opt['gibbs_steps']})")
        if not 0.0 < float(opt["gibbs_fraction"]) <= 1.0:
            raise ConfigError(f"gibbs_fraction must be in (0, 1] (got {opt['gibbs_fraction']})")

    def extra_steps(self) -> int:
        return int(self.opt["gibbs_steps"])

    def score_positions(self, masked, eligible, block, state, rows):
        # a Gibbs sweep re-samples masked positions anywhere in the generation
        if "sweeping" not in state:
            return eligible
        return torch.where(state["sweeping"][rows].unsqueeze(1), masked, eligible)

    def step(self, ctx: StepContext) -> StepResult:
        long_rows = ctx.k
        sweeps = ctx.load("sweeps", long_rows, 0)
        sweeping = ctx.load("sweeping", long_rows.bool(), False)
        ent_at_reveal = ctx.load("entropy", ctx.p_x0, 0.0)
        ent = ctx.entropy()
        # A sweeping row re-samples all its re-masked positions at once; the others decode highest entropy first.
        reveal = torch.where(sweeping.unsqueeze(-1), ctx.masked, ctx.select(ent))
        ent_at_reveal = torch.where(reveal, ent.to(ent_at_reveal.dtype), ent_at_reveal)

        done = ~(ctx.masked & ~reveal).any(-1)
        start = done & (sweeps < int(self.opt["gibbs_steps"]))
        candidates = ctx.fillable & (reveal | ~ctx.masked)
        n = candidates.sum(-1)
        r = (n.double() * float(self.opt["gibbs_fraction"])).round().long().clamp(min=1)
        scores = ent_at_reveal.masked_fill(~candidates, float("-inf"))
        rank = scores.argsort(dim=-1, descending=True, stable=True).argsort(dim=-1)
        remask = candidates & (rank < r.unsqueeze(-1)) & start.unsqueeze(-1)
        ctx.store("sweeps", sweeps + start.long())
        ctx.store("sweeping", start)
        ctx.store("entropy", ent_at_reveal)
        return StepResult(reveal=reveal, remask=remask)


class TopKRemaskDecoder(Strategy):
    """Ye et al.'s re-masking top-k decoder around an ordering strategy (`SamplerConfig.topk_remask`; Ye et al.
    2024, "Beyond Autoregression: Discrete Diffusion for Complex Reasoning and Planning", arXiv 2410.14157,
    `topk_decoding` in HKUNLP/diffusion-vs-ar, with which Kim et al. 2025 decode Sudoku). Every step predicts
    every position of the block, masked or revealed; the n - floor(n * rate) positions with the highest score of
    the wrapped strategy keep (or take) their prediction and the rest, cells revealed earlier included, are masked
    again. Over a block's S steps the rate falls to 0: `linear` (S-1-j)/S at step j, `cosine` cos((j+1)/S pi/2),
    so the last step reveals all. The shared `order_noise` adds Gumbel noise to the score (Ye's
    `stochastic<c>-linear` is order_noise=c, order_noise_decay=linear, with top_prob's scale=log, Ye's log p).

    Ties are broken by position, so exactly floor(n * rate) positions are re-masked (Ye's `score < cutoff` may mask
    fewer on ties). A block with nothing left to re-mask early (floor(n * rate) = 0) ends there.
    """

    remasks = True

    def __init__(self, inner: Strategy, rate: str):
        super().__init__()
        self.inner, self.rate = inner, rate
        self.name = inner.name

    def score_positions(self, masked, eligible, block, state, rows):
        return block  # predict all: the revealed cells of the block are re-predicted too

    def step(self, ctx: StepContext) -> StepResult:
        rate = block_decay(self.rate, ctx.block_step, ctx.block_steps)
        positions = ctx.block & ctx.fillable
        n_remask = torch.floor(positions.sum(-1, keepdim=True).double() * rate.clamp(0, 1)).long()
        scores = ctx.with_order_noise(self.inner.score(ctx).double())
        scores = scores.masked_fill(~positions, float("inf"))  # outside the block: never re-masked
        rank = scores.argsort(dim=-1, stable=True).argsort(dim=-1)  # 0 = lowest score
        remask = positions & (rank < n_remask)
        keep = positions & ~remask
        return StepResult(reveal=keep & ctx.masked, update=keep & ~ctx.masked, remask=remask & ~ctx.masked)


@register_sampler("remdm_llada")
class ReMDMLLaDA(Strategy):
    """ReMDM's LLaDA port (`llada_remdm_sample` of guanghanwang/ReMDM-LLaDA, the setting ReMDM's authors used for
    LLaDA): each block of S steps runs 2S passes of LLaDA's low-confidence decoding with proposals sampled at the
    configured temperature (the port samples at 1: use temperature=1). Passes j < T = floor(7B/8) (B the block size)
    reveal the B/S most confident proposals; in the T <= j < T + S window each pass first re-masks the remdm_number
    decided tokens of the block with the lowest confidence (the p their proposal had), then reveals remdm_number;
    the last passes reveal B/S again. Re-masking happens after the pass before (the same state the next pass reads).
    The port's settings: gen 32, block 32, steps 32, remdm_number 1 (Countdown) or 4 (TruthfulQA)."""

    options = {"remdm_number": 4}
    remasks = True
    honours = ()

    @classmethod
    def check_options(cls, opt: dict[str, Any]) -> None:
        if int(opt["remdm_number"]) < 1:
            raise ConfigError(f"remdm_number must be >= 1 (got {opt['remdm_number']})")

    def step(self, ctx: StepContext) -> StepResult:
        number = int(self.opt["remdm_number"])
        size, steps = ctx.block.sum(-1), ctx.block_steps
        window_start = torch.div(size * 7, 8, rounding_mode="floor")
        j = ctx.block_step
        in_window = (j >= window_start) & (j < window_start + steps)
        k = torch.where(in_window, torch.full_like(size, number), torch.div(size, steps, rounding_mode="floor"))
        confidence = ctx.load("remdm_llada_conf", ctx.p_x0.double(), float("inf"))
        confidence = torch.where((j == 0).unsqueeze(-1), torch.full_like(confidence, float("inf")), confidence)
        reveal = top_k(ctx.p_x0.double(), ctx.eligible, k)
        confidence = torch.where(reveal, ctx.p_x0.double(), confidence)
        # the next pass's re-masking (the port re-masks at the start of each pass of the window)
        nxt = j + 1
        remask_next = (nxt >= window_start) & (nxt < window_start + steps)
        decided = ctx.block & ctx.fillable & (~ctx.masked | reveal)
        lowest = top_k(-confidence, decided & torch.isfinite(confidence), torch.full_like(size, number))
        remask = lowest & remask_next.unsqueeze(-1)
        ctx.store("remdm_llada_conf", torch.where(remask, torch.full_like(confidence, float("inf")), confidence))
        return StepResult(reveal=reveal, remask=remask)
