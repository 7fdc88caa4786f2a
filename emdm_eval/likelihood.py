"""Monte Carlo ELBO log-likelihood of a continuation under a masked diffusion model (LLaDA's estimator).

For a sequence `context + continuation` with L continuation tokens, one draw picks l in {1..L}, masks l of the
continuation's tokens chosen uniformly at random, runs the denoiser once and sums the cross-entropy of the masked
tokens; the draw's estimate of -log p(continuation | context) is that sum times L / l. The result is minus the mean
over `mc_num` draws, a lower bound on the log-likelihood (exact in expectation for the ELBO).

The l of the draws are stratified (`counts="uniform"`, the default): with one continuous offset U ~ U[0, L),
l_j = floor((U + j L / n) mod L) + 1, so every l_j is exactly uniform on {1..L} (for any n) while the n draws cover
the range evenly. `counts="llada"` reproduces LLaDA's `eval_llada.py` instead: per batch of b draws, an integer
k ~ U{1..L} and l_j = ((round(k + j L / b) - 1) mod L) + 1, whose rounding (half to even) makes l not quite
uniform and the estimate depend on b (LLaDA's batch size; here `llada_batch`), e.g. P(l) = .1875/.3125/.1875/.3125
for L = 4, b = 16: for comparing with LLaDA's published likelihoods.

With `cfg_scale` s > 0 each pass also runs the draws with the context masked (LLaDA's classifier-free guidance):
logits = u + (s + 1) (c - u).

All randomness comes from a CPU `torch.Generator` seeded by the caller (one seed per request), and the draws of
one request are computed in forward passes that hold that request only (`rows` at a time), so a request's value
does not depend on the other requests, the batch size, the process count or the device it runs on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch



from emdm_core.mask_draws import (COUNT_SCHEMES, draw_masks, mask_count_distribution,  # noqa: F401
                                  stratified_mask_counts)


@dataclass
class ELBOResult:
    """The estimate for one request."""

    logprob: float  # MC ELBO estimate of log p(continuation | context)
    is_greedy: bool | None  # argmax check with the whole continuation masked (None when not computed)
    forward_passes: int


def elbo_loglikelihood(
    denoiser: Any,
    context: Sequence[int],
    continuation: Sequence[int],
    mc_num: int,
    seed: int,
    rows: int | None = None,
    greedy_row: bool = True,
    scheme: str = "uniform",
    cfg_scale: float = 0.0,
) -> ELBOResult:
    """MC ELBO of `continuation` given `context` (token id lists) with `mc_num` draws.

    `rows` caps the rows of one forward pass (default: all draws, plus the greedy row, in one pass); with the
    `llada` scheme it is also LLaDA's batch of draws. With `greedy_row`, one extra row with the whole continuation
    masked tells whether every continuation token is the model's argmax there (`is_greedy`).
    """
    L = len(continuation)
    if L == 0:
        return ELBOResult(0.0, True, 0)
    if mc_num < 1:
        raise ValueError("mc_num must be >= 1")
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed) & ((1 << 63) - 1))
    masks = draw_masks(L, mc_num, gen, scheme, rows or mc_num)  # [mc, L]
    weights = L / masks.sum(dim=1).double()  # L / l_j
    if greedy_row:
        masks = torch.cat([torch.ones(1, L, dtype=torch.bool), masks], dim=0)
    ctx = torch.tensor(list(context), dtype=torch.long)
    cont = torch.tensor(list(continuation), dtype=torch.long)
    n_rows = masks.shape[0]
    chunk = n_rows if not rows or rows <= 0 else int(rows)
    device = denoiser.device
    mask_id = int(denoiser.mask_token_id)
    target = cont.to(device)

    nll_sum = torch.zeros((), dtype=torch.float64)
    is_greedy: bool | None = None
    passes = 0
    for start in range(0, n_rows, chunk):
        m = masks[start:start + chunk]
        b = m.shape[0]
        noisy_cont = torch.where(m, torch.full_like(cont, mask_id).expand(b, L), cont.expand(b, L))
        seq = torch.cat([ctx.expand(b, len(ctx)), noisy_cont], dim=1)
        if cfg_scale > 0:  # LLaDA's guidance: the same draws with the context masked, in the same pass
            context_columns = torch.arange(seq.shape[1]).expand(b, -1) < len(ctx)
            logits = denoiser.guided_logits(seq.to(device), torch.ones_like(seq).to(device),
                                            context_columns.to(device), cfg_scale)
        else:
            logits = denoiser.logits(seq.to(device), torch.ones_like(seq).to(device))  # [b, T, V]
        passes += 1
        cont_logits = logits[:, len(ctx):, :].float()
        logp = torch.log_softmax(cont_logits, dim=-1)  # [b, L, V]
        tok_logp = logp.gather(-1, target.expand(b, L).unsqueeze(-1)).squeeze(-1).double().cpu()  # [b, L]
        first = 0
        if greedy_row and start == 0:
            is_greedy = bool((cont_logits[0].argmax(dim=-1) == target).all())
            first = 1
        if b > first:
            mm = m[first:]
            row_nll = -(tok_logp[first:] * mm.double()).sum(dim=1)  # sum of masked CE per row
            lo = start + first - (1 if greedy_row else 0)
            nll_sum += (row_nll * weights[lo:lo + mm.shape[0]]).sum()
    return ELBOResult(float(-nll_sum / mc_num), is_greedy, passes)
