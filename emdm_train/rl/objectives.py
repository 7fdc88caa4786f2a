"""Policy-gradient objectives for masked diffusion LMs: likelihood estimators, advantages and losses.

A masked diffusion LM has no exact per-token log-probabilities of its own samples, so RL for it rests on an
estimate. Two are here, each against its paper's definition (and its public code, in the tests):

* `d1_token_logps` (d1's diffu-GRPO, arXiv 2504.12216): one forward pass with the whole completion masked and
  each prompt token masked with probability p (0.15 in the paper, a fresh draw per inner update): the per-token
  log-probabilities of the completion under that pass.
* `elbo_sequence_logps`: a sequence's ELBO (LLaDA's fixed-count estimator, the one emdm's likelihood evaluation
  uses): draw l ~ U{1..L} (stratified), mask l of the L completion tokens uniformly, sum the masked tokens' log-
  probabilities times L / l; the mean over draws is a lower bound on log p(completion | prompt), differentiable.

Losses (per batch of N rollouts, G per prompt):

* `group_advantages`: reward minus its group's mean (d1, SPG and wd1 do not divide by the standard deviation;
  `scale=True` does, as GRPO's paper);
* `clipped_policy_loss`: d1's token-level clipped ratio objective with an optional k3 KL to a reference;
* `wd1_loss` (wd1, arXiv 2507.08838): -sum_i softmax(A)_i log pi(y_i) + sum_i softmax(-A)_i log pi(y_i), with
  log pi(y_i) a sequence log-likelihood estimate (d1's summed token estimate in wd1's code; an ELBO here too).
"""

from __future__ import annotations

from typing import Callable

import torch

from emdm_core.mask_draws import draw_masks

LogitsFn = Callable[[torch.Tensor], torch.Tensor]  # ids [B, L] -> logits [B, L, V]


def d1_masked_inputs(input_ids: torch.Tensor, completion_length: int, mask_id: int, p_mask_prompt: float,
                     generator: torch.Generator | None, uniforms: torch.Tensor | None = None) -> torch.Tensor:
    """d1's `forward_process`: every completion token masked, each prompt token with probability p; the uniforms
    are one `torch.rand((B, L))` draw (d1 seeds the global generator with the inner update's mask seed), or given
    (`uniforms`: a slice of that draw, so that a batch split into micro-batches masks as the whole batch would)."""
    rows, length = input_ids.shape
    u = uniforms if uniforms is not None else torch.rand((rows, length), generator=generator,
                                                          device=input_ids.device)
    prompt = torch.arange(length, device=input_ids.device) < length - completion_length
    masked = (prompt & (u < p_mask_prompt)) | ~prompt
    return torch.where(masked, torch.full_like(input_ids, mask_id), input_ids)


def _token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] per position, in float32 as d1 returns them."""
    flat = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                             reduction="none")
    return (-flat).view(targets.shape).float()


def d1_token_logps(logits_fn: LogitsFn, input_ids: torch.Tensor, completion_length: int, mask_id: int,
                   p_mask_prompt: float = 0.15, seed: int | None = None,
                   generator: torch.Generator | None = None, uniforms: torch.Tensor | None = None) -> torch.Tensor:
    """[B, C] d1's per-token log-probabilities of the last C tokens of `input_ids` (prompt + completion) from one
    pass of `logits_fn` on the masked input. The mask draw is `uniforms`, or comes from `generator`, or from a fresh
    generator on the ids' device seeded with `seed` (the same numbers d1 draws after `set_seed(seed)`)."""
    if generator is None and seed is not None and uniforms is None:
        generator = torch.Generator(device=input_ids.device).manual_seed(int(seed))
    noisy = d1_masked_inputs(input_ids, completion_length, mask_id, p_mask_prompt, generator, uniforms)
    logits = logits_fn(noisy)[:, -completion_length:, :]
    return _token_logps(logits, input_ids[:, -completion_length:])


def elbo_sequence_logps(logits_fn: LogitsFn, input_ids: torch.Tensor, completion_mask: torch.Tensor, mask_id: int,
                        draws: int, seeds: "list[int] | torch.Generator") -> torch.Tensor:
    """[B] the ELBO of each row's completion (the last C columns; `completion_mask` [B, C] marks its real tokens,
    padding after EOS excluded), from `draws` masked passes per row: mean over draws of (L / l) x the summed
    log-probabilities of the l masked tokens, l ~ U{1..L} stratified over the draws (`emdm_core.mask_draws`).
    `seeds`: one per row (a row's draws do not depend on the others), or one generator for all rows in turn."""
    rows, completion = completion_mask.shape
    lengths = completion_mask.sum(1)
    estimates = []
    for row in range(rows):  # per row: its own L; the draws of one row share one batched pass
        length = int(lengths[row])
        if length == 0:
            estimates.append(torch.zeros((), device=input_ids.device))
            continue
        generator = seeds if isinstance(seeds, torch.Generator) else torch.Generator().manual_seed(int(seeds[row]))
        masks = draw_masks(length, draws, generator).to(input_ids.device)  # [draws, L]
        where = torch.zeros(draws, input_ids.shape[1], dtype=torch.bool, device=input_ids.device)
        columns = input_ids.shape[1] - completion + torch.nonzero(completion_mask[row]).squeeze(1)
        where[:, columns] = masks
        noisy = torch.where(where, torch.full_like(where, mask_id, dtype=input_ids.dtype),
                            input_ids[row].expand(draws, -1))
        logps = _token_logps(logits_fn(noisy), input_ids[row].expand(draws, -1))  # [draws, T]
        weight = length / masks.sum(1).to(logps.dtype)  # L / l
        estimates.append(((logps * where).sum(1) * weight).mean())
    return torch.stack(estimates)


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = False) -> torch.Tensor:
    """Reward minus the mean of its group (rows grouped consecutively, G per prompt); `scale` also divides by the
    group's standard deviation (+1e-4), as GRPO does."""
    if group_size < 2 or rewards.numel() % group_size:
        raise ValueError(f"group-relative advantages need groups of >= 2 rollouts that divide the batch "
                         f"(got {rewards.numel()} rewards, group size {group_size})")
    grouped = rewards.view(-1, group_size).float()
    centred = grouped - grouped.mean(1, keepdim=True)
    if scale:
        centred = centred / (grouped.std(1, keepdim=True) + 1e-4)
    return centred.reshape(-1)


def clipped_policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
                        completion_mask: torch.Tensor, epsilon: float = 0.2, beta: float = 0.0,
                        ref_logps: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """d1's token-level objective: -min(r A, clip(r, 1-eps, 1+eps) A) per completion token with r = exp(logp -
    old_logp), plus beta x the k3 estimate of KL(pi || ref) (exp(ref - logp) - (ref - logp) - 1), averaged over the
    batch's completion tokens. Returns (loss, {"clip_ratio", "kl"})."""
    ratio = torch.exp(logps - old_logps)
    unclipped = ratio * advantages.unsqueeze(1)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * advantages.unsqueeze(1)
    per_token = -torch.min(unclipped, clipped)
    mask = completion_mask.to(per_token.dtype)
    metrics = {"clip_ratio": float(((unclipped < clipped).float() * mask).sum().detach() / mask.sum())}
    if beta:
        if ref_logps is None:
            raise ValueError("beta > 0 needs the reference model's log-probabilities (ref_logps)")
        kl = torch.exp(ref_logps - logps) - (ref_logps - logps) - 1
        per_token = per_token + beta * kl
        metrics["kl"] = float((kl * mask).sum().detach() / mask.sum())
    return (per_token * mask).sum() / mask.sum(), metrics


def wd1_weights(advantages: torch.Tensor) -> torch.Tensor:
    """The weight of each row's log-likelihood in wd1's loss: softmax(-A) - softmax(A) over the batch (they depend
    on the advantages only, so a batch split into micro-batches weights each row as the whole batch would)."""
    return torch.softmax(-advantages, dim=0) - torch.softmax(advantages, dim=0)


def wd1_loss(sequence_logps: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """wd1's weighted likelihood: -sum softmax(A) log pi(y) + sum softmax(-A) log pi(y) over the batch's rows."""
    return (sequence_logps * wd1_weights(advantages)).sum()
