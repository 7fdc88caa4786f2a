"""Masking schedules for masked-diffusion training: which tokens of a clean sequence are replaced by the mask token,
and how the loss on each masked token is weighted.

Every schedule is a registered, collator-style callable: `schedule(input_ids, maskable, noise=...)` takes a batch
of token ids [B, L] and the bool mask of positions that may be masked (not padding, not special, not prompt) and
returns a `MaskedBatch`: masked input ids, labels (-100 where not masked) and per-token loss weights. The trainer
minimises  sum(weights * CE(logits, labels)) / (number of maskable tokens),  so the weights define the objective.

| name       | noise level t per sequence | which tokens                                   | weight of a masked token |
|------------|----------------------------|------------------------------------------------|--------------------------|
| `uniform`  | U(eps, 1)                  | each independently with probability t (MDLM)   | 1/t (exact ELBO, linear) |
| `llada`    | U(0.15, 0.99)              | each independently with probability t (LLaDA)  | 1/t                      |
| `surprise` | U(eps, 1)                  | k = round(t n) drawn without replacement with  | n/k (= 1/t realised)     |
|            |                            | probabilities softmax(+-S/T) (Gumbel top-k)    |                          |
| `entropy`  | U(eps, 1)                  | k = round(t n), lowest model entropy first     | n/k                      |
| `discrete` | (j+1)/T, j ~ U{0..T-1}     | each independently with probability t (Ye et   | (T - j) n/k (bounded;    |
|            |                            | al. 2025's Sudoku recipe, T = 20)              | `time_weight` option)    |

n is the number of maskable tokens of the sequence. Why these weights: for `uniform`, (1/t) * CE summed over
masked tokens is the continuous-time ELBO of the linear schedule alpha_t = 1 - t (MDLM, LLaDA). `llada` keeps the
same weight on the truncated range [0.15, 0.99] (a reweighted ELBO, as in LLaDA's pre-training loss). For the
ordered schedules the forward process is no longer "each token independently with probability t", so 1/t is not
the exact ELBO of any reverse process the sampler runs; we use n/k, which (a) is exactly LLaDA's fixed-count
estimator (mask k of n uniformly, weight n/k) when the order is uniform, so `surprise` with T -> inf is the
standard MDM objective, and (b) gives every sequence the same expected loss scale as `uniform`, so learning rates
and loss curves stay comparable across schedules. Held-out loss is always reported with the `uniform` ELBO (fixed
noise), whatever schedule trains, so runs can be compared.

Randomness comes only from a `Noise` object (uniform draws per row and position), which the trainer draws for the
whole global batch from a generator seeded by (seed, step): the masks of a row do not depend on how the batch is
split over processes or accumulation steps, and a resumed run draws the same masks as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, NamedTuple

import torch

from emdm_core import typed
from emdm_core.registry import Registry
from emdm_core.typed import Check, at_least, greater_than

from .errors import TrainConfigError

LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Opt(NamedTuple):
    """A schedule option: its default, type, range check and help (the README's schedule table)."""

    default: Any
    type: Any
    check: Check | None = None
    help: str = ""


DIRECTIONS = ("high_first", "low_first")


def _direction(value: str) -> str | None:
    return None if value in DIRECTIONS else f"must be high_first or low_first (got {value!r})"


# the noise range every schedule has
RANGE_OPTIONS = {
    "t_min": Opt(None, float | None, None, "lowest noise level (default: the schedule's)"),
    "t_max": Opt(None, float | None, None, "highest noise level (default: the schedule's)"),
}
EPS = {"eps": Opt(1e-3, float, lambda v: None if 0 < v < 1 else "must be in (0, 1); MDLM uses 1e-3",
                  "smallest noise level t (the default t_min)")}


def build_masking(name: str, mask_token_id: int, **options: Any) -> "MaskingSchedule":
    """Instantiate the schedule registered as `name` with its options (and resources such as `surprise`)."""
    return MASKINGS.get(name)(mask_token_id=mask_token_id, **options)


# --- randomness ----------------------------------------------------------------------------------------------


@dataclass
class Noise:
    """Uniform [0, 1) draws that drive one batch of masking: per row `u_t` (noise level), `u_k` (rounding of the
    mask count), and per position `u_tok` (Bernoulli draw or Gumbel key) and `u_aux` (entropy probe groups)."""

    u_t: torch.Tensor
    u_k: torch.Tensor
    u_tok: torch.Tensor
    u_aux: torch.Tensor

    @classmethod
    def draw(cls, rows: int, length: int, generator: torch.Generator | None = None,
             device: torch.device | str | None = None, stratified: bool = False) -> "Noise":
        """Draw noise for `rows` sequences of `length` positions; `stratified` spreads u_t evenly over the rows
        (MDLM's low-discrepancy sampler: one uniform offset, then (offset + i/rows) mod 1 in random row order)."""
        u = torch.rand(rows, 2 * length + 2, generator=generator, device=device)
        u_t = u[:, 0]
        if stratified and rows > 1:
            offset = torch.rand(1, generator=generator, device=device)
            perm = torch.randperm(rows, generator=generator, device=device)
            u_t = (offset + perm.to(u.dtype) / rows) % 1.0
        return cls(u_t, u[:, 1], u[:, 2:2 + length], u[:, 2 + length:])

    def take(self, rows: slice | torch.Tensor, length: int) -> "Noise":
        """The noise of a subset of rows, cut to the first `length` positions."""
        return Noise(self.u_t[rows], self.u_k[rows], self.u_tok[rows, :length], self.u_aux[rows, :length])

    def to(self, device: torch.device | str) -> "Noise":
        """The same noise on `device`."""
        return Noise(*(x.to(device) for x in (self.u_t, self.u_k, self.u_tok, self.u_aux)))


def gumbel(u: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise from uniforms: -log(-log u)."""
    return -torch.log(-torch.log(u.clamp(1e-20, 1.0 - 1e-7)))


# --- the result ----------------------------------------------------------------------------------------------


@dataclass
class MaskedBatch:
    """A masked batch: model inputs, targets and the loss weight of every position."""

    input_ids: torch.Tensor  # [B, L] with masked positions set to the mask id
    labels: torch.Tensor  # [B, L] original ids at masked positions, -100 elsewhere
    weights: torch.Tensor  # [B, L] float loss weight, 0 where not masked
    mask: torch.Tensor  # [B, L] bool, True where masked
    t: torch.Tensor  # [B] sampled noise level
    n_maskable: torch.Tensor  # [B] number of maskable positions (the loss normaliser)


def maskable_positions(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                       unmaskable: torch.Tensor | None = None,
                       prompt_lengths: torch.Tensor | None = None,
                       trainable: torch.Tensor | None = None) -> torch.Tensor:
    """Bool [B, L]: real (attended) tokens that are not in the `unmaskable` id table [V] and not in the prompt;
    with `trainable` [B, L] (chat data: the assistant turns, their end-of-turn tokens included) exactly those."""
    ok = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    if trainable is not None:
        return ok & trainable.to(input_ids.device)
    if unmaskable is not None:
        ok = ok & ~unmaskable.to(input_ids.device)[input_ids]
    if prompt_lengths is not None:
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        ok = ok & (pos[None, :] >= prompt_lengths.to(input_ids.device)[:, None])
    return ok


# --- schedules -----------------------------------------------------------------------------------------------


class MaskingSchedule:
    """Base class: sample t per row, choose positions, weight the loss (see module docstring).

    A schedule declares its options (`options`: name -> `Opt`) and, for old spellings, `aliases` (old name ->
    (option, {old value: new value})); `resolve_options` is the one place they are converted and checked. The
    trainer passes `--masking-option k=v` (YAML `masking_options:`) and the per-schedule flags through it."""

    name: ClassVar[str] = "base"
    needs_model: ClassVar[bool] = False  # True when `__call__` needs `logits_fn`
    needs_surprise: ClassVar[bool] = False  # True when the constructor needs the surprise table (`surprise=`)
    default_t_range: ClassVar[tuple[float, float]] = (1e-3, 1.0)
    options: ClassVar[dict[str, Opt]] = dict(RANGE_OPTIONS)
    aliases: ClassVar[dict[str, tuple[str, dict[str, str]]]] = {}

    def __init__(self, mask_token_id: int, labels: Mapping[str, str] | None = None, **options: Any):
        self.mask_token_id = int(mask_token_id)
        self.opt = self.resolve_options(options, labels)
        lo, hi = self.default_t_range
        t_min = self.opt.get("t_min")
        if t_min is None and "eps" in self.opt:
            t_min = self.opt["eps"]
        self.t_min = float(lo if t_min is None else t_min)
        self.t_max = float(hi if self.opt.get("t_max") is None else self.opt["t_max"])
        if not 0.0 < self.t_min <= self.t_max <= 1.0:
            raise TrainConfigError(f"masking t range must satisfy 0 < t_min <= t_max <= 1 (got t_min={self.t_min}, "
                                   f"t_max={self.t_max}); e.g. --t-min 0.15 --t-max 0.99")

    @classmethod
    def resolve_options(cls, given: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Defaults overlaid with `given` (old names mapped, strings converted), each checked. `labels` says how
        the user named an option (e.g. `--surprise-temperature`), for the error message."""
        labels = dict(labels or {})
        out = {name: o.default for name, o in cls.options.items()}
        for raw, value in given.items():
            name, label = raw, labels.get(raw, raw)
            if raw in cls.aliases:
                name, values = cls.aliases[raw]
                if value not in values:
                    raise TrainConfigError(f"{label} must be {' or '.join(values)} (got {value!r})")
                value = values[value]
            if name not in cls.options:
                raise TrainConfigError(f"unknown option {label!r} for masking {cls.name!r}; its options: "
                                       f"{', '.join(sorted(cls.options)) or 'none'}")
            spec = cls.options[name]
            value = typed.coerce(value, spec.type, label, TrainConfigError)
            problem = spec.check(value) if spec.check is not None and value is not None else None
            if problem:
                raise TrainConfigError(typed.problem_message(label, value, problem))
            out[name] = value
        return out

    def sample_t(self, u_t: torch.Tensor) -> torch.Tensor:
        """Noise level per row from uniforms: t_min + (t_max - t_min) u."""
        return self.t_min + (self.t_max - self.t_min) * u_t

    def select(self, input_ids: torch.Tensor, maskable: torch.Tensor, t: torch.Tensor, noise: Noise,
               attention_mask: torch.Tensor, logits_fn: LogitsFn | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (mask [B, L] bool within `maskable`, per-row weight [B] of a masked token)."""
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, maskable: torch.Tensor, *, noise: Noise | None = None,
                 generator: torch.Generator | None = None, attention_mask: torch.Tensor | None = None,
                 logits_fn: LogitsFn | None = None) -> MaskedBatch:
        """Mask a batch. Noise is drawn from `generator` unless given; `logits_fn` is needed by `needs_model`."""
        rows, length = input_ids.shape
        if noise is None:
            noise = Noise.draw(rows, length, generator=generator, device=input_ids.device)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if self.needs_model and logits_fn is None:
            raise TrainConfigError(f"masking {self.name!r} needs the model (pass logits_fn)")
        maskable = maskable.bool()
        t = self.sample_t(noise.u_t)
        mask, row_weight = self.select(input_ids, maskable, t, noise, attention_mask, logits_fn)
        mask = mask & maskable
        weights = torch.where(mask, row_weight[:, None].to(torch.float32), torch.zeros((), device=mask.device))
        return MaskedBatch(
            input_ids=torch.where(mask, torch.full_like(input_ids, self.mask_token_id), input_ids),
            labels=torch.where(mask, input_ids, torch.full_like(input_ids, -100)),
            weights=weights, mask=mask, t=t, n_maskable=maskable.sum(1))


MASKINGS: Registry[type[MaskingSchedule]] = Registry("masking", base=MaskingSchedule, error=TrainConfigError)


def register_masking(name: str) -> Callable[[type[MaskingSchedule]], type[MaskingSchedule]]:
    """Class decorator: register a `MaskingSchedule` subclass under `name` (usable as `--masking name`)."""
    return MASKINGS.register(name)


def available_maskings() -> list[str]:
    """Names of the registered masking schedules."""
    return MASKINGS.available()


@register_masking("uniform")
class UniformMasking(MaskingSchedule):
    """MDM/MDLM: t ~ U(eps, 1); each maskable token masked independently with probability t; weight 1/t."""

    options = {**RANGE_OPTIONS, **EPS}

    def select(self, input_ids, maskable, t, noise, attention_mask, logits_fn):
        return noise.u_tok < t[:, None], 1.0 / t


@register_masking("llada")
class LLaDAMasking(UniformMasking):
    """LLaDA-style variable-rate masking (seed 002): t ~ U(0.15, 0.99), independent masking, weight 1/t."""

    default_t_range = (0.15, 0.99)
    options = dict(RANGE_OPTIONS)


TIME_WEIGHTS = ("linear", "original", "none")


@register_masking("discrete")
class DiscreteMasking(MaskingSchedule):
    """Ye et al. 2025's schedule (HKUNLP/diffusion-vs-ar `MDMTrainer`, their Sudoku recipe): t ~ U{0..T-1}, each
    maskable token masked with probability (t+1)/T (so the lowest mask rate is 1/T, not eps), and a bounded time
    weight: `linear` T - t in [1, T] (their Sudoku setting), `original` 1/(t+1), or `none`; the weighted loss is
    averaged over the row's masked tokens (weight x n/k), as theirs averages over the batch's masked tokens."""

    options = {"steps": Opt(20, int, at_least(1), "T, the number of discrete noise levels (theirs: 20)"),
               "time_weight": Opt("linear", str, lambda v: None if v in TIME_WEIGHTS else
                                  f"must be one of {', '.join(TIME_WEIGHTS)}",
                                  "linear: T - t (bounded, theirs), original: 1/(t+1), none: 1")}

    def sample_t(self, u_t: torch.Tensor) -> torch.Tensor:
        steps = self.opt["steps"]
        level = torch.clamp((u_t * steps).floor(), max=steps - 1)  # t in {0..T-1}
        return (level + 1) / steps  # the mask rate (t+1)/T

    def select(self, input_ids, maskable, t, noise, attention_mask, logits_fn):
        steps = self.opt["steps"]
        mask = (noise.u_tok < t[:, None]) & maskable
        level = torch.round(t * steps) - 1
        time_weight = {"linear": steps - level, "original": 1.0 / (level + 1),
                       "none": torch.ones_like(t)}[self.opt["time_weight"]]
        masked = mask.sum(1).clamp(min=1).to(t.dtype)
        return mask, time_weight * maskable.sum(1).to(t.dtype) / masked


class OrderedMasking(MaskingSchedule):
    """Mask exactly k = round(t n) tokens per row, drawn without replacement with probabilities
    softmax(score / T) over the maskable tokens (Gumbel top-k: keys = score / T + Gumbel, keep the k largest).
    The count uses stochastic rounding, so E[k] = t n. Loss weight n / k.

    `direction` uses the sampler's vocabulary: which tokens the trained model reveals first when it generates
    (the reverse of the masking order: `low_first` masks the high-scoring tokens first)."""

    def __init__(self, mask_token_id: int, labels: Mapping[str, str] | None = None, **options: Any):
        super().__init__(mask_token_id, labels, **options)
        self.temperature = float(self.opt["temperature"])
        self.direction = self.opt["direction"]

    def scores(self, input_ids: torch.Tensor, maskable: torch.Tensor, noise: Noise, attention_mask: torch.Tensor,
               logits_fn: LogitsFn | None) -> torch.Tensor:
        """Score [B, L] of each position: higher = masked earlier (before the temperature)."""
        raise NotImplementedError

    def select(self, input_ids, maskable, t, noise, attention_mask, logits_fn):
        n = maskable.sum(1)
        k = torch.floor(t * n + noise.u_k).long().clamp(min=1)
        k = torch.minimum(k, n)  # rows with n == 0 get k == 0
        keys = gumbel(noise.u_tok)
        if math.isfinite(self.temperature):
            score = self.scores(input_ids, maskable, noise, attention_mask, logits_fn)
            if self.temperature > 0:
                keys = score / self.temperature + keys
            else:  # deterministic order; Gumbel only breaks ties
                keys = score + 1e-6 * keys
        keys = keys.masked_fill(~maskable, float("-inf"))
        mask = ranks_descending(keys) < k[:, None]
        row_weight = n.to(torch.float32) / k.clamp(min=1).to(torch.float32)
        return mask, row_weight


def ranks_descending(keys: torch.Tensor) -> torch.Tensor:
    """Rank [B, L] of each key within its row, 0 = largest (one sort and one scatter, no Python loop)."""
    order = keys.argsort(dim=1, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(keys.shape[1], device=keys.device).expand_as(order))
    return ranks


@register_masking("surprise")
class SurpriseMasking(OrderedMasking):
    """Seed 000: mask tokens with probability softmax(S/T), S = -log2 p_unigram (the surprise table).

    `direction="low_first"` (default) is the seed's formula: high-surprise tokens are masked first (at small t),
    so in generation they are revealed last. `direction="high_first"` follows the seed's stated aim instead:
    frequent tokens are masked first and informative ones stay visible until t is near 1, i.e. they are predicted
    first. T -> 0 is a deterministic order, T -> inf the uniform MDM order. Maskable special tokens (the EOS that
    ends a response) have no surprise of their own and are scored with the row's mean surprise.
    """

    options = {**RANGE_OPTIONS, **EPS,
               "temperature": Opt(1.0, float, greater_than(0, "; small values such as 0.1 are near-greedy, large "
                                                              "ones such as 1e6 give uniform masking"),
                                  "T of softmax(S/T)"),
               "direction": Opt("low_first", str, _direction,
                                "reveal order the model is trained for: low_first (the formula) or high_first")}
    aliases = {"mask_first": ("direction", {"high": "low_first", "low": "high_first"})}
    needs_surprise = True

    def __init__(self, mask_token_id: int, surprise: Any = None, special_ids: Any = None,
                 labels: Mapping[str, str] | None = None, **options: Any):
        super().__init__(mask_token_id, labels, **options)
        table = getattr(surprise, "surprise", surprise)
        if table is None:
            raise TrainConfigError("masking 'surprise' needs a surprise table; build one with SurpriseTable")
        self.surprise = torch.as_tensor(table, dtype=torch.float32)
        if special_ids is None:
            special_ids = getattr(surprise, "special_ids", [])
        self.special = torch.zeros(self.surprise.numel(), dtype=torch.bool)
        if len(special_ids):
            self.special[torch.as_tensor(list(special_ids), dtype=torch.long)] = True
        self.sign = 1.0 if self.direction == "low_first" else -1.0

    def scores(self, input_ids, maskable, noise, attention_mask, logits_fn):
        if self.surprise.device != input_ids.device:
            self.surprise = self.surprise.to(input_ids.device)
            self.special = self.special.to(input_ids.device)
        s = self.surprise[input_ids]
        spec = self.special[input_ids] & maskable
        plain = maskable & ~spec
        row_mean = (s * plain).sum(1) / plain.sum(1).clamp(min=1)
        return self.sign * torch.where(spec, row_mean[:, None], s)


@register_masking("entropy")
class EntropyMasking(OrderedMasking):
    """ENS (seed 001, Diffusion-EAGS): order tokens by the model's own predictive entropy and mask low-entropy
    tokens first, so the model learns to reveal high-entropy tokens first (`direction="high_first"`, as EAGS
    decodes; "low_first" reverses it). The entropy comes from a no-grad probe:
    `probe_passes=0` runs one pass on the clean sequence (sensible for BERT/RoBERTa-style models, which learn to
    predict visible tokens too); `probe_passes=P>=1` splits the maskable tokens into P random groups and runs P
    passes, each with one group masked, so every token's entropy is read where it is masked (mask rate 1/P; use
    this for models trained only on masked positions, such as MDMs trained from scratch). `temperature=0` (default)
    is ENS's deterministic order (random tie-breaks); T > 0 samples the order from softmax(-+H/T)."""

    needs_model = True
    options = {**RANGE_OPTIONS, **EPS,
               "temperature": Opt(0.0, float, at_least(0, "; 0 is ENS's deterministic order"),
                                  "0: deterministic order; T > 0 samples it from softmax(-+H/T)"),
               "direction": Opt("high_first", str, _direction,
                                "reveal order the model is trained for: high_first (ENS) or low_first"),
               "probe_passes": Opt(0, int, at_least(0), "0: one pass on the clean sequence; P: P masked passes")}
    aliases = {"mask_first": ("direction", {"low": "high_first", "high": "low_first"})}

    def __init__(self, mask_token_id: int, labels: Mapping[str, str] | None = None, **options: Any):
        super().__init__(mask_token_id, labels, **options)
        self.sign = 1.0 if self.direction == "low_first" else -1.0
        self.probe_passes = int(self.opt["probe_passes"])

    def entropy(self, input_ids: torch.Tensor, maskable: torch.Tensor, noise: Noise, attention_mask: torch.Tensor,
                logits_fn: LogitsFn) -> torch.Tensor:
        """Predictive entropy (nats) [B, L] of the model at every position, from the probe passes."""
        if self.probe_passes == 0:
            return _entropy(logits_fn(input_ids, attention_mask))
        group = (noise.u_aux * self.probe_passes).long().clamp(max=self.probe_passes - 1)
        out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
        for j in range(self.probe_passes):  # one pass per group (P is small), not per token
            sel = maskable & (group == j)
            probe = torch.where(sel, torch.full_like(input_ids, self.mask_token_id), input_ids)
            out = torch.where(sel, _entropy(logits_fn(probe, attention_mask)), out)
        return out

    def scores(self, input_ids, maskable, noise, attention_mask, logits_fn):
        return self.sign * self.entropy(input_ids, maskable, noise, attention_mask, logits_fn)


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


# --- collator --------------------------------------------------------------------------------------------------


class MaskingCollator:
    """A `DataLoader` collate_fn: pad examples ({"input_ids", optional "prompt_length"}) and mask them.

    Returns a dict with `input_ids` (masked), `attention_mask`, `labels`, `loss_weights`, `t` and `n_maskable`.
    Schedules that need the model (`entropy`) get `logits_fn`.
    """

    def __init__(self, schedule: MaskingSchedule, pad_token_id: int, unmaskable: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, logits_fn: LogitsFn | None = None):
        self.schedule = schedule
        self.pad_token_id = int(pad_token_id)
        self.unmaskable = unmaskable
        self.generator = generator
        self.logits_fn = logits_fn

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        seqs = [torch.as_tensor(e["input_ids"], dtype=torch.long) for e in examples]
        length = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), length), self.pad_token_id, dtype=torch.long)
        attn = torch.zeros((len(seqs), length), dtype=torch.long)
        for i, s in enumerate(seqs):  # per example, not per token
            ids[i, : len(s)] = s
            attn[i, : len(s)] = 1
        prompt = torch.tensor([int(e.get("prompt_length", 0)) for e in examples])
        maskable = maskable_positions(ids, attn, self.unmaskable, prompt)
        out = self.schedule(ids, maskable, generator=self.generator, attention_mask=attn, logits_fn=self.logits_fn)
        return {"input_ids": out.input_ids, "attention_mask": attn, "labels": out.labels,
                "loss_weights": out.weights, "t": out.t, "n_maskable": out.n_maskable}


def weighted_mlm_loss_sum(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum over masked positions of weight * cross-entropy (float32); divide by the maskable count for the loss."""
    sel = labels != -100  # an empty selection still yields a (zero) gradient for every parameter
    ce = torch.nn.functional.cross_entropy(logits[sel].float(), labels[sel], reduction="none")
    return (ce * weights[sel]).sum()
