"""Strategies that refine a whole block at every step: the entropy-bound sampler and Duo's ancestral update.

On a uniform-state canvas (Duo, DiffusionGemma) nothing is decided until the block finishes: every step predicts
every position of the block, a strategy accepts some proposals, keeps or renoises the rest, and says when the block
is done (its positions then settle on the argmax). The ordering strategies (`margin`, `top_prob`, ...) also run on
a uniform-state canvas: there they settle the top-k noisy positions per step and keep the others' noise tokens.
"""

from __future__ import annotations

from typing import Any

import torch

from emdm_core.errors import ConfigError

from ..proposals import inverse_cdf  # the loop's exact float64 inverse CDF
from . import StepContext, StepResult, Strategy, register_sampler


def _categorical_entropy(flat_logits: torch.Tensor) -> torch.Tensor:
    """[N] entropy in nats, computed as torch.distributions.Categorical does (DiffusionGemma's sampler and stop rule
    use it: the same arithmetic gives the same accept sets)."""
    return torch.distributions.Categorical(logits=flat_logits).entropy()


def posterior_weights(probs: torch.Tensor, current: torch.Tensor, alpha_s: torch.Tensor, alpha_ts: torch.Tensor,
                      uniform: torch.Tensor) -> torch.Tensor:
    """[N, V] Duo's ancestral posterior q(x_s | x_t, x0 ~ p), unnormalised: (alpha_t|s [v = x_t] + (1 - alpha_t|s)
    u(x_t)) (alpha_s p_v + (1 - alpha_s) u(v)) for the current tokens x_t [N] (`uniform` [V]: the noise law)."""
    prior = alpha_s * probs + (1 - alpha_s) * uniform  # q(x_s | x0 ~ p)
    weights = (1 - alpha_ts) * uniform[current].unsqueeze(-1) * prior
    weights.scatter_add_(-1, current.unsqueeze(-1), alpha_ts * prior.gather(-1, current.unsqueeze(-1)))
    return weights


@register_sampler("entropy_bound")
class EntropyBound(Strategy):
    """The entropy-bound (EB) sampler (Ben-Hamu et al. 2025, arXiv 2505.24857), as DiffusionGemma runs it.

    Each step sorts the block's positions by predictive entropy and accepts the k lowest while
    sum(entropy_1..k) - max(entropy_1..k) <= entropy_bound (an upper bound on the mutual information of the
    accepted tokens: they are close to independent given the context).
    - Uniform-state canvas (DiffusionGemma, Duo models): the accepted positions take their sampled proposals, every
      other position of the block is renoised with a fresh random token; nothing settles until the block stops:
      when its argmax has not changed for `stability_threshold` steps and the mean entropy is below
      `confidence_threshold` (DiffusionGemma's StableAndConfidentStoppingCriteria), or at its last step; the block
      then settles on the argmax of the last pass.
    - Masked canvas (the EB-sampler of the paper): the accepted masked positions are revealed (at least one per
      step; the block's last step reveals the rest).
    Entropies are those of the tempered distribution on a uniform-state canvas (temperature / temperature_end).
    """

    options = {"entropy_bound": 0.1, "stability_threshold": 1, "confidence_threshold": 0.005}
    honours = ()  # its own accept rule: no threshold, schedule or ordering noise

    @classmethod
    def check_options(cls, opt: dict[str, Any]) -> None:
        if not float(opt["entropy_bound"]) > 0:
            raise ConfigError(f"entropy_bound must be > 0 (got {opt['entropy_bound']})")
        if int(opt["stability_threshold"]) < 0:
            raise ConfigError(f"stability_threshold must be >= 0 steps (got {opt['stability_threshold']})")
        if not float(opt["confidence_threshold"]) > 0:
            raise ConfigError(f"confidence_threshold must be > 0 nats (got {opt['confidence_threshold']})")

    def accepted(self, positions: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
        """[B, W] the lowest-entropy `positions` whose cumulative entropy minus its maximum stays within the bound."""
        ent = entropy.masked_fill(~positions, float("inf"))
        ordered, index = torch.sort(ent, dim=-1, descending=False)
        inside = (torch.cumsum(ordered, dim=-1) - ordered) <= float(self.opt["entropy_bound"])
        return torch.zeros_like(inside).scatter(-1, index, inside) & positions

    def step(self, ctx: StepContext) -> StepResult:
        entropy = ctx.scatter(_categorical_entropy(ctx.flat_logits))
        if not ctx.uniform_noise:
            accept = self.accepted(ctx.eligible, entropy)  # the lowest-entropy position is always inside
            last = (ctx.block_step + 1 >= ctx.block_steps).unsqueeze(-1)
            return StepResult(reveal=(accept | last) & ctx.eligible)
        canvas = ctx.eligible  # the block's noisy positions (DiffusionGemma: the whole canvas)
        accept = self.accepted(canvas, entropy)
        noisy_tokens = torch.where(accept, ctx.x0, ctx.random_tokens(canvas))
        finish = self.stopped(ctx, canvas, entropy) | (ctx.block_step + 1 >= ctx.block_steps)
        return StepResult(reveal=torch.zeros_like(canvas), noisy_tokens=noisy_tokens, finish=finish)

    def stopped(self, ctx: StepContext, canvas: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
        """[B] stable (the argmax equal over the last `stability_threshold` steps of the block) and confident."""
        k = int(self.opt["stability_threshold"])
        argmax = ctx.argmax
        if k == 0:
            stable = torch.ones(canvas.shape[0], dtype=torch.bool, device=canvas.device)
        else:
            history = ctx.load("argmax_history", argmax.unsqueeze(1).expand(-1, k, -1), -1)
            history = torch.where((ctx.block_step == 0).view(-1, 1, 1), torch.full_like(history, -1), history)
            same = (history == argmax.unsqueeze(1)) | ~canvas.unsqueeze(1)
            stable = same.all(-1).all(-1)
            ctx.store("argmax_history", torch.cat([history[:, 1:], argmax.unsqueeze(1)], dim=1))
        counts = canvas.sum(-1)
        if bool((counts == counts[0]).all()) and int(counts[0]) > 0:  # the mean as DiffusionGemma takes it
            mean = entropy[canvas].view(len(counts), int(counts[0])).mean(-1)
        else:
            mean = entropy.masked_fill(~canvas, 0.0).sum(-1) / counts.clamp(min=1)
        return stable & (mean < float(self.opt["confidence_threshold"]))


@register_sampler("duo")
class DuoAncestral(Strategy):
    """Duo's ancestral sampler for uniform-state diffusion (Sahoo et al. 2025, "The Diffusion Duality", arXiv
    2506.10892; the posterior of UDLM, Schiff et al. 2024). Within a block of S steps, time runs t = 1 - j/S with
    alpha_t = 1 - t; each step every position of the block draws x_s from

        q(x_s = v | x_t, x0 ~ p) ~ (alpha_t|s [v = x_t] + (1 - alpha_t|s) u(x_t)) (alpha_s p_v + (1 - alpha_s) u(v)),

    alpha_t|s = alpha_t / alpha_s, u the uniform distribution over the model's noise vocabulary and p the model's
    prediction; the last step (s = 0) takes the argmax of p (noise removal). Tokens keep changing until then: this is
    the self-correction uniform-state models offer."""

    noises = ("uniform",)
    honours = ()  # every position revised every step: no threshold, schedule or ordering noise

    def score_positions(self, masked, eligible, block, state, rows):
        return block

    def step(self, ctx: StepContext) -> StepResult:
        j = ctx.block_step.double()
        s = ctx.block_steps.double()
        alpha_t, alpha_s = j / s, ((j + 1) / s).clamp(max=1.0)
        alpha_ts = alpha_t / alpha_s
        rows = ctx.scored.nonzero()[:, 0]  # the row of each scored position
        a_s, a_ts = alpha_s[rows].unsqueeze(-1), alpha_ts[rows].unsqueeze(-1)
        probs = ctx.flat_probs.double()
        uniform = torch.zeros(probs.shape[-1], dtype=torch.float64, device=probs.device)
        vocabulary = ctx.noise_vocabulary
        if vocabulary is None:
            uniform.fill_(1.0 / probs.shape[-1])
        else:
            uniform[vocabulary] = 1.0 / len(vocabulary)
        weights = posterior_weights(probs, ctx.x[ctx.scored], a_s, a_ts, uniform)
        drawn = inverse_cdf(weights.float(), ctx.uniform("duo_ancestral")[ctx.scored])
        sample = ctx.x.clone()
        sample[ctx.scored] = drawn
        finish = ctx.block_step + 1 >= ctx.block_steps
        return StepResult(reveal=torch.zeros_like(ctx.eligible), noisy_tokens=sample, finish=finish)
