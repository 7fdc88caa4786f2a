"""Order-only strategies: they decide which masked positions to reveal first; revealed tokens stay fixed."""

from __future__ import annotations

from typing import Any

import torch

from emdm_core.errors import ConfigError
from . import StepContext, Strategy, register_sampler


@register_sampler("vanilla")
class Vanilla(Strategy):
    """Random order: the MDM reverse process (Austin et al. 2021; Sahoo et al. 2024, MDLM; Kim et al. 2025
    "vanilla"). Each step reveals a uniformly random subset of the eligible masked positions."""

    def score(self, ctx: StepContext) -> torch.Tensor:
        return ctx.uniform("order").float()


@register_sampler("top_prob")
class TopProb(Strategy):
    """Highest max-probability first (Chang et al. 2022, MaskGIT; Kim et al. 2025, "top probability"):
    score = max_j p(x_i = j), or its log with `scale=log` (Ye et al.'s x0 score: the same order, but order_noise
    then perturbs log p instead of p)."""

    options = {"scale": "prob"}

    @classmethod
    def check_options(cls, opt: dict[str, Any]) -> None:
        if opt["scale"] not in ("prob", "log"):
            raise ConfigError(f"scale must be prob or log (got {opt['scale']!r})")

    def score(self, ctx: StepContext) -> torch.Tensor:
        if self.opt["scale"] == "log":
            return (ctx.top_logits(1)[..., 0] - ctx.log_z).double()
        return ctx.top_probs(1)[..., 0]


@register_sampler("margin")
class Margin(Strategy):
    """Largest top-2 probability gap first (Kim et al. 2025, "Train for the Worst, Plan for the Best",
    top-probability margin): score = p(j1) - p(j2) for the two most likely tokens j1, j2."""

    def score(self, ctx: StepContext) -> torch.Tensor:
        top2 = ctx.top_probs(2)
        return top2[..., 0] - top2[..., 1]


@register_sampler("entropy")
class Entropy(Strategy):
    """Lowest predictive entropy first (Dream's `entropy` algorithm; Ben-Hamu et al. 2025): score = -H(p_i)."""

    def score(self, ctx: StepContext) -> torch.Tensor:
        return -ctx.entropy()


@register_sampler("low_confidence_remask")
class LowConfidenceRemask(Strategy):
    """LLaDA's `low_confidence` remasking (Nie et al. 2025, Algorithm 5): predict every masked position (with
    Gumbel noise at `temperature`), keep the k most confident predictions, p(x0_i), and re-mask the rest."""

    def score(self, ctx: StepContext) -> torch.Tensor:
        return ctx.p_x0


@register_sampler("surprise")
class Surprise(Strategy):
    """emdm's seed-000 idea at inference: reveal first the positions whose proposed token carries the most
    information, S(x) = -log2 p_unigram(x) from the checkpoint's surprise table (saved by emdm_train).

    The order is sampled without replacement with probabilities softmax(S / surprise_temperature) (Gumbel top-k);
    `surprise_temperature` -> 0 is greedy, large values approach random order. `surprise_direction="low_first"`
    reveals the least informative tokens first instead.
    """

    options = {"surprise_temperature": 1.0, "surprise_direction": "high_first"}
    needs_surprise = True

    @classmethod
    def check_options(cls, opt: dict[str, Any]) -> None:
        if float(opt["surprise_temperature"]) <= 0:
            raise ConfigError(f"surprise_temperature must be > 0 (got {opt['surprise_temperature']}); use a small "
                              f"value such as 0.01 for greedy order")
        if opt["surprise_direction"] not in ("high_first", "low_first"):
            raise ConfigError(f"surprise_direction must be high_first or low_first (got "
                              f"{opt['surprise_direction']!r})")

    def score(self, ctx: StepContext) -> torch.Tensor:
        if ctx.surprise is None:
            raise ConfigError("sampler=surprise needs the checkpoint's surprise table (surprise.safetensors beside "
                              "config.json); fine-tune with emdm_train, which saves one, or choose another sampler")
        s = ctx.surprise.to(ctx.x.device)[ctx.x0].double()
        if self.opt["surprise_direction"] == "low_first":
            s = -s
        return s / float(self.opt["surprise_temperature"]) + ctx.gumbel("surprise")


@register_sampler("pc_sampler")
class PCSampler(Strategy):
    """PC-Sampler (Huang et al. 2025, arXiv 2508.13021; NEUIR/PC-Sampler `pc_sampler_function`): position-aware
    weighting times calibrated confidence, score = exp(-pc_lambda * i) * min(pc_alpha, -p(x0) log f_bg(x0)), i the
    position within the block and f_bg the token's corpus frequency (the checkpoint's surprise table:
    f = 2^-S; ids it lacks score 0). pc_lambda = 0 leaves the calibrated confidence alone; large values decode left to
    right. Paper: pc_lambda 0.25, pc_alpha 10 (Sudoku 0, Countdown 1)."""

    options = {"pc_lambda": 0.25, "pc_alpha": 10.0}
    needs_surprise = True

    @classmethod
    def check_options(cls, opt: dict[str, Any]) -> None:
        if float(opt["pc_lambda"]) < 0 or float(opt["pc_alpha"]) <= 0:
            raise ConfigError(f"pc_lambda must be >= 0 and pc_alpha > 0 (got {opt['pc_lambda']}, {opt['pc_alpha']})")

    def score(self, ctx: StepContext) -> torch.Tensor:
        if ctx.surprise is None:
            raise ConfigError("sampler=pc_sampler needs corpus token frequencies: the checkpoint's surprise table "
                              "(surprise.safetensors, saved by emdm_train); or choose another sampler")
        frequency = torch.exp2(-ctx.surprise.to(ctx.x.device))[ctx.x0]
        calibrated = (-ctx.p_x0 * torch.log(frequency + 1e-9)).clamp(max=float(self.opt["pc_alpha"]))
        position = (ctx.block.long().cumsum(-1) - 1).clamp(min=0).float()
        return torch.exp(-float(self.opt["pc_lambda"]) * position) * calibrated
