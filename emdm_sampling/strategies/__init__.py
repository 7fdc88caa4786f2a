"""Unmasking strategies: each is a small registered scorer or update rule over the shared denoising loop.

A strategy sees one `StepContext` per forward pass (the model's probabilities, the proposed tokens, which
positions are masked and eligible, how many to reveal) and returns a `StepResult`: which positions to reveal and,
for remasking strategies, which revealed positions to mask again. Most strategies only define `score`: the loop
reveals the highest-scoring eligible positions. Third-party strategies register with `@register_sampler("name")`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, ClassVar

import torch

from emdm_core.registry import Registry

from ..rng import CounterRNG

# The shared options a strategy may or may not read (`Strategy.honours`): the reveal count and its ordering are
# read by `StepContext.select`, topk_remask wraps a strategy's `score`. Every other shared option is the loop's.
ORDERING_OPTIONS = ("threshold", "schedule", "order_noise", "order_noise_decay")
STRATEGY_OPTIONS = (*ORDERING_OPTIONS, "topk_remask")


def block_decay(kind: str, block_step: torch.Tensor, block_steps: torch.Tensor) -> torch.Tensor:
    """[B, 1] a rate that falls over a block's S steps, at step j: `linear` (S-1-j)/S (Ye et al.'s), `cosine`
    cos((j+1)/S pi/2), anything else 1. The ordering noise and the re-masking top-k decoder share it."""
    j = block_step.double().unsqueeze(-1)
    s = block_steps.double().unsqueeze(-1)
    if kind == "linear":
        return (s - 1 - j) / s
    if kind == "cosine":
        return torch.cos((j + 1) / s * (math.pi / 2))
    return torch.ones_like(j)


def rank_among(scores: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """[B, W] each position's rank among `where` by descending score, ties by position (W outside `where`)."""
    order = scores.masked_fill(~where, float("-inf")).argsort(dim=-1, descending=True, stable=True)
    return order.argsort(dim=-1).masked_fill(~where, scores.shape[-1])


def top_k(scores: torch.Tensor, where: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """[B, W] bool: the k[b] highest-scoring positions among `where` per row (ties by position)."""
    return (rank_among(scores, where) < k.unsqueeze(-1)) & where


@dataclass
class StepContext:
    """Everything a strategy may look at in one step (all tensors batched: B rows, W window positions)."""

    step: int  # global step index (the same for a row in any batch)
    x: torch.Tensor  # [B, W] current tokens
    dense_logits: Callable[[], torch.Tensor]  # builds `logits` on demand (most strategies never need it)
    scored: torch.Tensor  # [B, W] bool: positions whose proposals and statistics are computed (see below)
    flat_logits: torch.Tensor  # [N, V] float32 logits of the scored positions, row-major (mask token: lowest float)
    flat_log_z: torch.Tensor  # [N] their logsumexp
    x0: torch.Tensor  # [B, W] proposed tokens (argmax, or sampled at `temperature`; the current token elsewhere)
    p_x0: torch.Tensor  # [B, W] probability of the proposed token (0 where not scored)
    masked: torch.Tensor  # [B, W] bool: masked positions still to be decoded
    eligible: torch.Tensor  # [B, W] bool: masked positions in each row's current block
    block: torch.Tensor  # [B, W] bool: all positions of each row's current block
    fillable: torch.Tensor  # [B, W] bool: generated positions (may be re-masked by remasking strategies)
    confidence: torch.Tensor  # [B, W] p of each token when it was last revealed (0 if never)
    k: torch.Tensor  # [B] positions to reveal this step (from the schedule)
    block_step: torch.Tensor  # [B] step index within the row's current block
    block_steps: torch.Tensor  # [B] steps the row's current block is given
    threshold: float | None
    rng: CounterRNG
    mask_token_id: int
    surprise: torch.Tensor | None  # [V] surprise table of the checkpoint, if it has one
    rows: torch.Tensor | None = None  # [B] indices of these rows in the whole batch (finished rows drop out)
    batch_size: int = 0  # rows in the whole batch
    state: dict[str, torch.Tensor] = field(default_factory=dict)  # the strategy's memory, whole-batch tensors
    # [N, V] exp(logit - row max) at the scored positions and [N] their sums (the loop computes them for log Z;
    # None: derived from flat_logits and flat_log_z)
    flat_exp: torch.Tensor | None = None
    flat_sum_exp: torch.Tensor | None = None
    order_noise: float = 0.0  # Gumbel noise coefficient on the ordering score (SamplerConfig.order_noise)
    order_noise_decay: str = "none"  # how the coefficient shrinks over a block's steps
    # uniform-state models (Duo, DiffusionGemma): noisy positions hold random tokens instead of the mask (`masked`
    # then means "noisy"); `random_tokens(positions [B, W])` draws fresh noise tokens for this step's rows
    uniform_noise: bool = False
    random_tokens: Callable[[torch.Tensor], torch.Tensor] | None = None
    noise_vocabulary: torch.Tensor | None = None  # [K] the ids noise tokens are drawn from (None: the vocabulary)
    # the temperature this step's proposals were drawn at, per scored position ([N, 1]) or one float; None: argmax
    temperature_at_scored: float | torch.Tensor | None = None
    total_steps: int = 0  # the config's `steps` (the pass budget of the whole generation)
    # strategies that verify (`Strategy.verifies`): [B, W] the probability of each block position's current token
    # predicted with that token hidden (0 outside the block)
    verification: torch.Tensor | None = None

    @cached_property
    def argmax(self) -> torch.Tensor:
        """[B, W] the most probable token at the scored positions (the current token elsewhere)."""
        out = self.x.clone()
        out[self.scored] = self.flat_logits.argmax(-1)
        return out

    def noise_scale(self) -> torch.Tensor:
        """[B, 1] this step's ordering-noise coefficient: constant, or decayed over the block (`block_decay`)."""
        return self.order_noise * block_decay(self.order_noise_decay, self.block_step, self.block_steps).clamp(min=0)

    def with_order_noise(self, scores: torch.Tensor) -> torch.Tensor:
        """`scores` + this step's ordering noise (c * Gumbel, float64), or `scores` unchanged without noise."""
        if self.order_noise <= 0:
            return scores
        return scores.double() + self.noise_scale() * self.gumbel("order_noise")

    @cached_property
    def logits(self) -> torch.Tensor:
        """[B, W, V] the model's logits (the mask token excluded: -inf); with a KV cache, only the columns the pass
        computed (each row's current block at least) hold logits, the others 0."""
        return self.dense_logits()

    def load(self, name: str, like: torch.Tensor, fill: float | bool | int = 0) -> torch.Tensor:
        """This step's rows of a per-row state tensor shaped like `like` (created with `fill` on first use)."""
        if name not in self.state:
            self.state[name] = torch.full((self.batch_size, *like.shape[1:]), fill, dtype=like.dtype,
                                          device=like.device)
        return self.state[name][self.rows]

    def store(self, name: str, value: torch.Tensor) -> None:
        """Write this step's rows of a per-row state tensor."""
        self.state[name][self.rows] = value

    # Vocabulary-wide work is done only at the scored positions: the eligible ones (those a strategy can reveal
    # this step), or wider where the strategy's `score_positions` asks for more. Values elsewhere are 0.
    def scatter(self, values: torch.Tensor) -> torch.Tensor:
        """Place per-scored-position values [N, ...] into a zero tensor [B, W, ...]."""
        out = values.new_zeros((*self.scored.shape, *values.shape[1:]))
        out[self.scored] = values
        return out

    @cached_property
    def log_z(self) -> torch.Tensor:
        """[B, W] logsumexp of the logits at the scored positions, 0 elsewhere."""
        return self.scatter(self.flat_log_z)

    @cached_property
    def flat_probs(self) -> torch.Tensor:
        """[N, V] softmax (temperature 1) at the scored positions."""
        if self.flat_exp is not None and self.flat_sum_exp is not None:
            return self.flat_exp / self.flat_sum_exp.unsqueeze(-1)
        return (self.flat_logits - self.flat_log_z.unsqueeze(-1)).exp_()

    @cached_property
    def probs(self) -> torch.Tensor:
        """[B, W, V] softmax of the logits (temperature 1) at the scored positions, 0 elsewhere."""
        return self.scatter(self.flat_probs)

    def top_logits(self, k: int) -> torch.Tensor:
        """[B, W, k] the k largest logits at the scored positions (0 elsewhere)."""
        return self.scatter(self.flat_logits.topk(k, dim=-1).values)

    def top_probs(self, k: int) -> torch.Tensor:
        """[B, W, k] the k largest probabilities, without materialising the full softmax."""
        return self.scatter(torch.exp(self.flat_logits.topk(k, dim=-1).values - self.flat_log_z.unsqueeze(-1)))

    def entropy(self) -> torch.Tensor:
        """[B, W] predictive entropy in nats: H = log Z - sum_v p_v l_v, the sum a dot product per position (no
        [N, V] product is materialised)."""
        return self._entropy

    @cached_property
    def _entropy(self) -> torch.Tensor:
        if self.flat_exp is not None and self.flat_sum_exp is not None:
            weights, total = self.flat_exp, self.flat_sum_exp  # sum_v p_v l_v = (sum_v e_v l_v) / sum_v e_v
        else:
            weights, total = self.flat_probs, None
        # the per-position dot product as a batched matmul: no [N, V] temporary, one read of each operand
        dot = torch.bmm(weights.unsqueeze(1), self.flat_logits.unsqueeze(2)).flatten()
        return self.scatter(self.flat_log_z - (dot if total is None else dot / total))

    def select(self, scores: torch.Tensor) -> torch.Tensor:
        """Reveal the top-`k` eligible positions by `scores` (or, with a threshold, all confident ones). With
        `order_noise` c > 0 the ranking is by scores + c * Gumbel: the top-k is then a draw without replacement
        from softmax(scores / c) (how Dream's alg_temp and Kim et al.'s noisy ordering pick positions)."""
        scores = self.with_order_noise(scores)
        if self.threshold is None:
            return top_k(scores, self.eligible, self.k)
        first = (rank_among(scores, self.eligible) == 0) & self.eligible
        return ((self.p_x0 >= self.threshold) & self.eligible) | first

    def uniform(self, stream: str | int) -> torch.Tensor:
        """Per-row counter-based uniforms for this step, [B, W], from the named stream (`emdm_sampling.rng.STREAMS`;
        a new name gets its own stream)."""
        return self.rng.uniform(self.step, stream).to(self.x.device)

    def gumbel(self, stream: str | int) -> torch.Tensor:
        """Per-row counter-based Gumbel noise for this step, [B, W]."""
        return self.rng.gumbel(self.step, stream).to(self.x.device)


@dataclass
class StepResult:
    """What a step changes: `reveal` (masked / noisy positions: they settle) and `update` (revealed positions,
    re-predicted) take `tokens` (default: the proposals); `remask` (revealed positions) become noise again (the
    mask, or a fresh random token); every other position keeps its token.

    Uniform-state strategies also set `noisy_tokens` (the new tokens of the positions that stay noisy: accepted
    proposals and renoised ones) and `finish` ([B] bool: the row's block is decided now; its noisy positions settle
    on `final_tokens`, default the argmax)."""

    reveal: torch.Tensor
    remask: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    update: torch.Tensor | None = None
    noisy_tokens: torch.Tensor | None = None
    finish: torch.Tensor | None = None
    final_tokens: torch.Tensor | None = None


class Strategy:
    """Base class: subclasses set `options` (name -> default) and implement `score` or override `step`."""

    name: ClassVar[str] = ""
    options: ClassVar[dict[str, Any]] = {}
    remasks: ClassVar[bool] = False  # whether revealed tokens can change again
    noises: ClassVar[tuple[str, ...]] = ("mask", "uniform")  # the canvases it decodes (ModelContract.noise)
    # the strategy-dependent shared options it reads (of STRATEGY_OPTIONS): a scorer decoded by `select` reads them
    # all; a subclass that overrides `step` reads none unless it says so (a setting it ignores is then refused)
    honours: ClassVar[tuple[str, ...]] = STRATEGY_OPTIONS
    verifies: ClassVar[bool] = False  # needs `StepContext.verification` (shadow logits in the same pass: WINO)
    needs_surprise: ClassVar[bool] = False  # reads the checkpoint's surprise table (corpus token frequencies)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "step" in cls.__dict__ and "honours" not in cls.__dict__:
            cls.honours = ()

    def __init__(self, options: dict[str, Any] | None = None):
        self.opt = {**self.options, **(options or {})}
        self.check_options(self.opt)

    @classmethod
    def check_options(cls, opt: dict[str, Any]) -> None:
        """Raise `ConfigError` for option values out of range."""

    def extra_steps(self) -> int:
        """Forward passes this strategy may take beyond the reveal schedule (e.g. Gibbs sweeps)."""
        return 0

    def score_positions(self, masked: torch.Tensor, eligible: torch.Tensor, block: torch.Tensor,
                        state: dict[str, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        """[b, W] bool: where this step needs proposals and their statistics (default: the masked positions of the
        current block, the ones `select` can reveal). A row that needs positions outside its block gets a pass
        over its whole sequence under a KV cache."""
        return eligible

    def score(self, ctx: StepContext) -> torch.Tensor:
        """[B, W] priority of each position: the highest eligible ones are revealed first."""
        raise NotImplementedError(f"{type(self).__name__} must implement score() or step()")

    def step(self, ctx: StepContext) -> StepResult:
        """Default update rule: reveal the top-k eligible positions by `score`."""
        return StepResult(reveal=ctx.select(self.score(ctx)))


SAMPLERS: Registry[type[Strategy]] = Registry("sampler", base=Strategy)


def register_sampler(name: str) -> Callable[[type[Strategy]], type[Strategy]]:
    """Class decorator: register a `Strategy` subclass under `name` (usable as `sampler=name` everywhere)."""
    return SAMPLERS.register(name)


def available_samplers(denoiser: Any = None) -> list[str]:
    """Names of the registered strategies, built-in and third-party; with `denoiser`, those that can decode it: its
    noise (masked or uniform-state), and what they need of it (shadow verification, a surprise table)."""
    names = SAMPLERS.available()
    if denoiser is None:
        return names
    return [n for n in names if model_problem(SAMPLERS.get(n), denoiser.contract) is None]


def model_problem(strategy: type[Strategy], contract: Any) -> str | None:
    """Why `strategy` cannot decode the model of `contract` (a `ModelContract`), or None."""
    if contract.noise not in strategy.noises:
        return "noise"
    if strategy.verifies and not contract.verification:
        return "verification"
    if strategy.needs_surprise and not contract.surprise_table:
        return "surprise"
    return None


def get_sampler(name: str) -> type[Strategy]:
    """The strategy class registered as `name`; unknown names list the registered ones."""
    return SAMPLERS.get(name)


from . import dilated, ordering, parallel, remasking, uniform  # noqa: E402,F401  (register the built-ins)
