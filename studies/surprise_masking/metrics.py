"""The measurements of the staged surprise-masking study (issue 15), the same for every model.

- **M1**: NELBO under uniform (MDLM) masking on held-out blocks, bits per token and per character, with noise that
  depends only on an evaluation seed (common random numbers: every model sees the same masks).
- **M2**: the same bound after a *prior correction*: logits + beta_b * S(v), one scalar beta per noise bin b
  (t in equal-width bins), fitted on validation blocks by Newton's method on the cross-entropy (convex in beta)
  and applied unchanged to the test blocks. Every model gets it, the uniform one included, so a model trained to
  expect rare tokens under a mask is not charged for that prior, and a model is not credited for a prior alone.
- **M3**: cross-entropy on masked test tokens at fixed mask rates, per surprise quintile (edges from the training
  split), raw and prior-corrected (the beta of the rate's noise bin), and the *context gain* per quintile: the
  unigram model's cross-entropy S(y) minus the model's.

Per-block sums are kept so that two models can be compared block by block (paired) as well as seed by seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np
import torch

LN2 = math.log(2.0)


class Denoiser(Protocol):
    """What the measurements need of a model: logits of a batch, its mask id, vocabulary and device."""

    mask_token_id: int
    vocab_size: int
    device: torch.device

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...


@dataclass
class EvalData:
    """Held-out blocks, the training-split surprise of every id and what may be masked."""

    blocks: torch.Tensor  # [N, L] token ids
    surprise: torch.Tensor  # [V] bits (0 at special ids)
    bucket_of_id: torch.Tensor  # [V] surprise quintile 0..4 (-1: never scored)
    unmaskable: torch.Tensor  # [V] bool: ids that are never masked (pad, mask)


@dataclass
class NoiseProtocol:
    """How the noise is drawn: draws per block, eps of t, noise bins, fixed rates, batch size and seed."""

    draws: int = 2
    eps: float = 1e-3
    bins: int = 8
    rates: tuple[float, ...] = (0.15, 0.5)
    batch_size: int = 64
    seed: int = 1234
    fit_cap: int = 4096  # masked validation tokens kept per noise bin for the beta fit
    n_buckets: int = 5


def noise_bin(t: torch.Tensor, bins: int) -> torch.Tensor:
    """Index of the equal-width bin of [0, 1] that each noise level t falls in."""
    return (t * bins).long().clamp(0, bins - 1)


def _masked_batches(den: Denoiser, data: EvalData, proto: NoiseProtocol, split_seed: int):
    """Yield (block indices, masked batch) for every draw and batch of the uniform-masking protocol."""
    from emdm_train.masking import Noise, UniformMasking, maskable_positions

    schedule = UniformMasking(den.mask_token_id, eps=proto.eps)
    n, length = data.blocks.shape
    unmaskable = data.unmaskable.to(den.device)
    for d in range(proto.draws):
        g = torch.Generator().manual_seed(proto.seed * 1000 + split_seed * 100 + d)
        noise = Noise.draw(n, length, generator=g, stratified=True)
        for start in range(0, n, proto.batch_size):
            rows = torch.arange(start, min(n, start + proto.batch_size))
            ids = data.blocks[rows].to(den.device)
            attn = torch.ones_like(ids)
            maskable = maskable_positions(ids, attn, unmaskable)
            yield rows, schedule(ids, maskable, noise=noise.take(slice(start, start + len(rows)), length).to(
                den.device), attention_mask=attn)


def corrected_ce(logits: torch.Tensor, labels: torch.Tensor, surprise: torch.Tensor,
                 beta: torch.Tensor | float) -> torch.Tensor:
    """Cross-entropy in nats of `labels` under softmax(logits + beta * surprise); beta a scalar or one per row."""
    beta = torch.as_tensor(beta, dtype=logits.dtype, device=logits.device)
    shifted = logits + (beta[:, None] if beta.dim() else beta) * surprise[None, :]
    return torch.logsumexp(shifted, -1) - shifted.gather(-1, labels[:, None]).squeeze(-1)


def fit_beta(logits: torch.Tensor, labels: torch.Tensor, surprise: torch.Tensor, iters: int = 25,
             limit: float = 4.0) -> float:
    """The beta minimising mean CE(softmax(logits + beta S), labels): Newton's method on a convex 1-D function
    (gradient E_p[S] - S_y, curvature Var_p[S]), float64, beta kept in [-limit, limit]."""
    if labels.numel() == 0:
        return 0.0
    z = logits.double()
    s = surprise.double().to(z.device)
    s_y = s[labels]
    beta = 0.0
    for _ in range(iters):
        p = torch.softmax(z + beta * s, -1)
        mean_s = p @ s
        var_s = (p @ (s * s)) - mean_s ** 2
        grad = float((mean_s - s_y).mean())
        hess = float(var_s.mean())
        if hess <= 1e-12:
            break
        step = max(-1.0, min(1.0, grad / hess))
        beta = max(-limit, min(limit, beta - step))
        if abs(step) < 1e-7:
            break
    return beta


@torch.no_grad()
def fit_prior_correction(den: Denoiser, data: EvalData, proto: NoiseProtocol) -> list[float]:
    """One beta per noise bin, fitted on `data` (the validation blocks) under the uniform-masking protocol."""
    kept_logits: list[list[torch.Tensor]] = [[] for _ in range(proto.bins)]
    kept_labels: list[list[torch.Tensor]] = [[] for _ in range(proto.bins)]
    counts = [0] * proto.bins
    for rows, mb in _masked_batches(den, data, proto, split_seed=1):
        logits = den.logits(mb.input_ids, torch.ones_like(mb.input_ids)).float()
        bins = noise_bin(mb.t, proto.bins)[:, None].expand_as(mb.mask)[mb.mask]
        lg, lb = logits[mb.mask], mb.labels[mb.mask]
        for b in range(proto.bins):
            room = proto.fit_cap - counts[b]
            if room <= 0:
                continue
            sel = (bins == b).nonzero().flatten()[:room]
            if sel.numel():
                kept_logits[b].append(lg[sel].cpu())
                kept_labels[b].append(lb[sel].cpu())
                counts[b] += int(sel.numel())
    surprise = data.surprise.float()
    return [fit_beta(torch.cat(kept_logits[b]), torch.cat(kept_labels[b]), surprise) if counts[b] else 0.0
            for b in range(proto.bins)]


@torch.no_grad()
def measure(den: Denoiser, test: EvalData, betas: Sequence[float], proto: NoiseProtocol) -> dict[str, Any]:
    """M1 and M2 on the test blocks (per-block sums in bits) and M3 at each fixed rate (per block and quintile)."""
    n = test.blocks.shape[0]
    surprise = test.surprise.float().to(den.device)
    beta_of_bin = torch.tensor(list(betas), dtype=torch.float32, device=den.device)
    nelbo_raw = torch.zeros(n, dtype=torch.float64)
    nelbo_corr = torch.zeros(n, dtype=torch.float64)
    maskable_count = torch.zeros(n, dtype=torch.float64)
    for rows, mb in _masked_batches(den, test, proto, split_seed=2):
        logits = den.logits(mb.input_ids, torch.ones_like(mb.input_ids)).float()
        sel = mb.mask
        row_of = torch.arange(len(rows), device=sel.device)[:, None].expand_as(sel)[sel]
        labels = mb.labels[sel]
        weight = mb.weights[sel].double()
        raw = corrected_ce(logits[sel], labels, surprise, 0.0).double()
        beta = beta_of_bin[noise_bin(mb.t, proto.bins)][row_of]
        corr = corrected_ce(logits[sel], labels, surprise, beta).double()
        nelbo_raw.index_add_(0, rows, torch.zeros(len(rows), dtype=torch.float64).index_add_(
            0, row_of.cpu(), (raw * weight).cpu()) / LN2)
        nelbo_corr.index_add_(0, rows, torch.zeros(len(rows), dtype=torch.float64).index_add_(
            0, row_of.cpu(), (corr * weight).cpu()) / LN2)
        maskable_count.index_add_(0, rows, mb.n_maskable.double().cpu())
    out: dict[str, Any] = {"betas": list(betas), "block_nelbo_raw_bits": nelbo_raw.numpy(),
                           "block_nelbo_corr_bits": nelbo_corr.numpy(), "block_maskable": maskable_count.numpy()}
    total = float(maskable_count.sum())
    out["m1_bpt"] = float(nelbo_raw.sum()) / total
    out["m2_bpt"] = float(nelbo_corr.sum()) / total
    for rate in proto.rates:
        out.update(_fixed_rate(den, test, rate, beta_of_bin, proto))
    return out


def _fixed_rate(den: Denoiser, test: EvalData, rate: float, beta_of_bin: torch.Tensor,
                proto: NoiseProtocol) -> dict[str, Any]:
    """M3 at one mask rate: every maskable token masked independently with probability `rate` (fixed noise)."""
    from emdm_train.masking import maskable_positions

    n, length = test.blocks.shape
    k = proto.n_buckets
    g = torch.Generator().manual_seed(proto.seed * 1000 + 700 + int(round(rate * 100)))
    u = torch.rand(n, length, generator=g)
    sums = {name: torch.zeros(n, k, dtype=torch.float64) for name in ("ce_raw", "ce_corr", "unigram", "count")}
    surprise = test.surprise.float().to(den.device)
    bucket_of_id = test.bucket_of_id.to(den.device)
    beta = beta_of_bin[noise_bin(torch.tensor([rate], device=den.device), proto.bins)].item()
    for start in range(0, n, proto.batch_size):
        rows = torch.arange(start, min(n, start + proto.batch_size))
        ids = test.blocks[rows].to(den.device)
        attn = torch.ones_like(ids)
        mask = maskable_positions(ids, attn, test.unmaskable.to(den.device)) & (u[rows].to(den.device) < rate)
        logits = den.logits(torch.where(mask, torch.full_like(ids, den.mask_token_id), ids), attn).float()
        labels = ids[mask]
        row_of = torch.arange(len(rows), device=ids.device)[:, None].expand_as(mask)[mask]
        bucket = bucket_of_id[labels]
        keep = bucket >= 0
        flat = (row_of * k + bucket.clamp(min=0))[keep].cpu()
        values = {"ce_raw": corrected_ce(logits[mask], labels, surprise, 0.0),
                  "ce_corr": corrected_ce(logits[mask], labels, surprise, beta),
                  "unigram": surprise[labels] * LN2, "count": torch.ones_like(labels, dtype=torch.float32)}
        for name, v in values.items():
            part = torch.zeros(len(rows) * k, dtype=torch.float64).index_add_(0, flat, v[keep].double().cpu())
            sums[name][rows] += part.view(len(rows), k)
    tag = f"r{int(round(rate * 100)):02d}"
    out: dict[str, Any] = {f"block_{tag}_{name}": v.numpy() for name, v in sums.items()}
    count = sums["count"].sum(0)
    for name in ("ce_raw", "ce_corr", "unigram"):  # NaN for a quintile with no masked token
        per_bucket = torch.where(count > 0, sums[name].sum(0) / count.clamp(min=1) / LN2,
                                 torch.full_like(count, float("nan"))).tolist()
        for b in range(k):
            out[f"m3_{tag}_{name}_q{b + 1}"] = per_bucket[b]
    for b in range(k):
        out[f"m3_{tag}_gain_q{b + 1}"] = out[f"m3_{tag}_unigram_q{b + 1}"] - out[f"m3_{tag}_ce_raw_q{b + 1}"]
    out[f"m3_{tag}_beta"] = beta
    return out


def scalars(measured: dict[str, Any]) -> dict[str, Any]:
    """The summary numbers of `measure` (per-block arrays left out)."""
    return {k: v for k, v in measured.items() if not k.startswith("block_")}


def blocks(measured: dict[str, Any]) -> dict[str, np.ndarray]:
    """The per-block arrays of `measure` (for `np.savez`)."""
    return {k: np.asarray(v) for k, v in measured.items() if k.startswith("block_")}


def block_metric(arrays: dict[str, np.ndarray], metric: str) -> np.ndarray:
    """Per-block terms of a pooled metric from saved arrays: the block's sum (bits) divided by the mean count per
    block, so that their mean is the pooled value and, since every model sees the same masks (equal counts), the
    mean of a block-wise difference between two models is the difference of their pooled values.
    `metric`: `m1_bpt`, `m2_bpt`, or `m3_rNN_{ce_raw,ce_corr,unigram}_qK`."""
    if metric in ("m1_bpt", "m2_bpt"):
        key = "block_nelbo_raw_bits" if metric == "m1_bpt" else "block_nelbo_corr_bits"
        return arrays[key] / max(float(arrays["block_maskable"].mean()), 1e-12)
    parts = metric.split("_")
    if len(parts) != 5 or parts[0] != "m3":
        raise KeyError(f"unknown per-block metric {metric!r}")
    tag, name, b = parts[1], f"{parts[2]}_{parts[3]}", int(parts[4][1:]) - 1
    count = arrays[f"block_{tag}_count"][:, b]
    return arrays[f"block_{tag}_{name}"][:, b] / LN2 / max(float(count.mean()), 1e-12)
