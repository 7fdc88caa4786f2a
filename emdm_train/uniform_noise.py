"""Duo training (Sahoo et al. 2025, "The Diffusion Duality", arXiv 2506.10892; seed 002): uniform-state corruption
by Gaussian noise on one-hot tokens and an argmax, soft tokens early in training, a symmetric-KL loss scaled per row.

Corruption. A clean token x, one-hot over the K ids of the noise vocabulary, becomes

    x_t = argmax((1 - w) e_x + w eps),   eps ~ N(0, I_K),

with a noise weight w per row. By symmetry x_t is x with probability 1 - r(w) and otherwise uniform over the other
K - 1 ids, where 1 - r(w) = int phi(z) Phi(z + (1 - w) / w)^(K - 1) dz (the clean coordinate must beat the largest
of K - 1 Gaussians). So x_t is a sample of uniform-state diffusion with alpha = (1 - r - 1/K) / (1 - 1/K): the
duality Duo is named after. emdm draws t ~ U(t_min, t_max) per row (MDLM's range and low-discrepancy sampler), sets
alpha_t = 1 - t (the linear schedule the `duo` sampler reverses) and w = the weight with that alpha; or, with
`noise_weight_range`, w ~ U(lo, hi) as in the seed's notes (alpha then follows from w).

Hard tokens draw x_t directly from that law (a flip with probability r(w), then a uniform other id): the same
distribution as the argmax, without a [B, L, K] Gaussian. Soft tokens (the curriculum of the first steps) need
the Gaussian: the model then reads softmax(((1 - w) e_x + w eps) / tau) @ E instead of the embedding of x_t, tau
falling linearly to 0 (= the argmax, hard tokens).

Loss. Every position that could be corrupted carries a loss (the model must say, everywhere, what the clean token
is): cross-entropy (= KL(one-hot || p)) + KL(p || q), q the one-hot smoothed by `smoothing` (so that the reverse
KL is finite): it also penalises probability on wrong tokens. Each row is scaled by its alpha_t, the share of
clean signal, so that heavily noised rows do not dominate the gradient (the seed's stated aim; its formula,
w / (V (1 - w) + w), grows with the noise and contradicts its own comment, so emdm uses alpha_t).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from .errors import TrainConfigError
from .masking import MaskedBatch, Noise

_Z = torch.linspace(-12.0, 12.0, 4001, dtype=torch.float64)  # quadrature grid of the keep probability


def keep_probability(weight: torch.Tensor | float, k: int) -> torch.Tensor:
    """P(argmax((1 - w) e_x + w eps) = x) over K = `k` ids, by quadrature (float64, any shape of `weight`; computed
    on the CPU, returned on `weight`'s device)."""
    w = torch.as_tensor(weight, dtype=torch.float64)
    device, w = w.device, w.cpu()
    c = ((1 - w) / w.clamp(min=1e-12)).unsqueeze(-1)
    log_density = -0.5 * _Z ** 2 - 0.5 * math.log(2 * math.pi)
    integrand = torch.exp(log_density + (k - 1) * torch.special.log_ndtr(_Z + c))
    return torch.trapezoid(integrand, _Z, dim=-1).clamp(0.0, 1.0).to(device)


def alpha_of_keep(keep: torch.Tensor, k: int) -> torch.Tensor:
    """The uniform-state alpha with P(x_t = x) = alpha + (1 - alpha) / K."""
    return ((keep - 1.0 / k) / (1.0 - 1.0 / k)).clamp(0.0, 1.0)


@dataclass
class DuoBatch(MaskedBatch):
    """A corrupted batch: `input_ids` hold x_t, `mask` the flipped positions, `weights` the row scale alpha_t at every
    corruptible position; `soft` [B, L, K] the soft tokens (curriculum) or None."""

    soft: torch.Tensor | None = None
    corruptible: torch.Tensor | None = None  # [B, L] positions that read noise (maskable ids of the noise vocabulary)
    noise_weight: torch.Tensor | None = None  # [B] w
    alpha: torch.Tensor | None = None  # [B]


class GaussianArgmaxCorruption:
    """Duo's corruption over the noise vocabulary (see the module docstring); called like a masking schedule."""

    name = "duo"
    needs_model = False

    def __init__(self, vocabulary: torch.Tensor, vocab_size: int, t_min: float = 1e-3, t_max: float = 1.0,
                 noise_weight_range: tuple[float, float] | None = None):
        self.vocabulary = vocabulary.long().cpu()
        self.k = len(self.vocabulary)
        if self.k < 2:
            raise TrainConfigError(f"--noise uniform needs at least 2 ordinary tokens to draw noise from (the "
                                   f"tokenizer has {self.k}); check the tokenizer's special tokens")
        self.index_of = torch.full((vocab_size,), -1, dtype=torch.long)
        self.index_of[self.vocabulary] = torch.arange(self.k)
        if not 0.0 < t_min <= t_max <= 1.0:
            raise TrainConfigError(f"--noise uniform: t range must satisfy 0 < t_min <= t_max <= 1 (got {t_min}, "
                                   f"{t_max})")
        self.t_min, self.t_max = float(t_min), float(t_max)
        if noise_weight_range is not None:
            lo, hi = noise_weight_range
            if not 0.0 < lo <= hi <= 1.0:
                raise TrainConfigError(f"--noise-weight-range must satisfy 0 < lo <= hi <= 1 (got {lo}, {hi}); e.g. "
                                       f"0.25,0.5 (the seed's range)")
        self.noise_weight_range = noise_weight_range
        # alpha(w) on a log grid, for the inverse map alpha -> w (alpha falls from 1 to 0 as w grows to 1)
        self._w_grid = torch.logspace(-4, 0, 1024, dtype=torch.float64)
        self._alpha_grid = alpha_of_keep(keep_probability(self._w_grid, self.k), self.k)

    def weight_for_alpha(self, alpha: torch.Tensor) -> torch.Tensor:
        """[B] the noise weight w whose alpha is `alpha` (monotone interpolation on the grid)."""
        a = self._alpha_grid.flip(0).numpy()  # ascending
        w = self._w_grid.flip(0).numpy()
        return torch.from_numpy(np.interp(alpha.double().cpu().numpy(), a, w)).to(alpha.device)

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, maskable: torch.Tensor, *, noise: Noise | None = None,
                 generator: torch.Generator | None = None, attention_mask: torch.Tensor | None = None,
                 logits_fn: Any = None, soft_temperature: float = 0.0,
                 row_seeds: list[int] | None = None) -> DuoBatch:
        """Corrupt a batch (as a masking schedule masks one: noise drawn from `generator` unless given); with
        `soft_temperature` > 0 also the soft tokens, from one Gaussian generator per row (`row_seeds`)."""
        device = input_ids.device
        if noise is None:
            noise = Noise.draw(*input_ids.shape, generator=generator, device=device)
        t = self.t_min + (self.t_max - self.t_min) * noise.u_t.double()
        keep = None  # [B] P(x_t = x), the quadrature, computed once where it is needed
        if self.noise_weight_range is not None:
            lo, hi = self.noise_weight_range
            w = lo + (hi - lo) * noise.u_t.double()
            keep = keep_probability(w, self.k)
            alpha = alpha_of_keep(keep, self.k)
        else:
            alpha = 1.0 - t
            w = self.weight_for_alpha(alpha)
        index = self.index_of.to(device)[input_ids]
        corruptible = maskable.bool() & (index >= 0)
        soft = None
        if soft_temperature > 0:
            noisy, soft = self._gaussian(index, w.float(), soft_temperature, row_seeds)
        else:
            if keep is None:
                keep = keep_probability(w, self.k)
            flip = noise.u_tok < (1.0 - keep).unsqueeze(-1)  # r(w): the probability a token changes
            other = (noise.u_aux * (self.k - 1)).long().clamp(max=self.k - 2)
            noisy = torch.where(other >= index, other + 1, other)  # uniform over the K - 1 other ids
            noisy = torch.where(flip, noisy, index)
        tokens = torch.where(corruptible, self.vocabulary.to(device)[noisy.clamp(min=0)], input_ids)
        flipped = corruptible & (tokens != input_ids)
        weights = torch.where(corruptible, alpha.float().unsqueeze(-1), torch.zeros((), device=device))
        return DuoBatch(input_ids=tokens, labels=torch.where(corruptible, input_ids, torch.full_like(input_ids, -100)),
                        weights=weights, mask=flipped, t=t.float(), n_maskable=maskable.sum(1), soft=soft,
                        corruptible=corruptible, noise_weight=w.float(), alpha=alpha.float())

    def _gaussian(self, index: torch.Tensor, w: torch.Tensor, tau: float,
                  row_seeds: list[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(argmax, softmax(latent / tau)) of latent = (1 - w) e_x + w eps, eps from one generator per row."""
        rows, length = index.shape
        seeds = row_seeds if row_seeds is not None else list(range(rows))
        eps = torch.stack([torch.randn(length, self.k, generator=torch.Generator().manual_seed(int(s)))
                           for s in seeds]).to(index.device)
        one_hot = torch.nn.functional.one_hot(index.clamp(min=0), self.k).to(eps.dtype)
        latent = (1 - w).view(-1, 1, 1) * one_hot + w.view(-1, 1, 1) * eps
        return latent.argmax(-1), torch.softmax(latent / tau, dim=-1)


def soft_temperature(step: int, steps: int, start: float) -> float:
    """The curriculum's tau at `step`: `start` falling linearly to 0 over `steps` steps (0 afterwards: hard)."""
    if steps <= 0 or step >= steps:
        return 0.0
    return start * (1.0 - step / steps)


@contextlib.contextmanager
def soft_token_inputs(model: torch.nn.Module, batch: DuoBatch, vocabulary: torch.Tensor) -> Iterator[None]:
    """While active, the model's input embedding reads `batch.soft` @ E[vocabulary] at the corruptible positions
    (the embedding module's own output for the vocabulary ids, so any scaling it applies is kept)."""
    if batch.soft is None:
        yield
        return
    embedding = model.get_input_embeddings()
    inside = {"busy": False}

    def hook(module: torch.nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
        if inside["busy"]:
            return out
        positions = batch.corruptible
        if out.shape[:2] != positions.shape:
            raise TrainConfigError(f"--soft-token-steps: {type(model).__name__} does not embed its input position "
                                   f"by position (its embedding returned {tuple(out.shape[:2])} for "
                                   f"{tuple(positions.shape)} tokens); use --soft-token-steps 0 with this model")
        inside["busy"] = True
        try:
            table = module(vocabulary.to(out.device))  # [K, D]
        finally:
            inside["busy"] = False
        soft = batch.soft.to(table.dtype) @ table
        return torch.where(positions.unsqueeze(-1), soft, out)

    handle = embedding.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def symmetric_kl_loss_sum(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                          smoothing: float) -> torch.Tensor:
    """sum over labelled positions of weight * (KL(one-hot || p) + KL(p || q)), q = (1 - s) one-hot + s / V
    (float32)."""
    sel = labels != -100
    logp = torch.log_softmax(logits[sel].float(), dim=-1)
    target = labels[sel]
    vocab = logp.shape[-1]
    logp_x = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    p = logp.exp()
    p_x = logp_x.exp()
    neg_entropy = torch.where(p > 0, p * logp, torch.zeros((), device=p.device)).sum(-1)
    q_other = smoothing / vocab
    q_x = 1.0 - smoothing + q_other
    reverse = neg_entropy - p_x * math.log(q_x) - (1 - p_x) * math.log(q_other)
    return ((-logp_x + reverse) * weights[sel]).sum()
