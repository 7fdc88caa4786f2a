"""The mask draws of LLaDA's fixed-count ELBO estimator: n mask counts in {1..L} spread evenly over the range, and
masks of those sizes chosen uniformly. One implementation for evaluation (`emdm_eval.likelihood`) and training
(`emdm_train.rl`'s sequence ELBO); the schemes are described in `emdm_eval.likelihood`'s docstring."""

from __future__ import annotations

import torch

COUNT_SCHEMES = ("uniform", "llada")


def stratified_mask_counts(length: int, n: int, generator: torch.Generator, scheme: str = "uniform",
                           llada_batch: int = 16) -> torch.Tensor:
    """n mask counts in {1..length}, spread evenly over the range (see the module docstring for the schemes)."""
    if scheme == "uniform":
        offset = torch.rand((), generator=generator, dtype=torch.float64) * length
        x = (offset + torch.arange(n, dtype=torch.float64) * (length / n)) % length
        return x.floor().long().clamp(max=length - 1) + 1
    if scheme != "llada":
        raise ValueError(f"unknown mask-count scheme {scheme!r}; use one of {', '.join(COUNT_SCHEMES)}")
    parts = []
    for start in range(0, n, llada_batch):
        b = min(llada_batch, n - start)
        k = int(torch.randint(1, length + 1, (), generator=generator))
        x = torch.round(torch.linspace(float(k), k + (b - 1) * (length / b), steps=b, dtype=torch.float64)).long()
        parts.append(((x - 1) % length) + 1)
    return torch.cat(parts)


def mask_count_distribution(length: int, n: int) -> torch.Tensor:
    """[n, length] exact P(l_j = v) of the `uniform` scheme (each row sums to 1), by integrating over the offset."""
    out = torch.zeros(n, length, dtype=torch.float64)
    for j in range(n):
        shift = j * length / n
        # l = v where (U + shift) mod L lies in [v - 1, v): U in [v - 1 - shift, v - shift) mod L, U ~ U[0, L)
        for v in range(1, length + 1):
            lo, hi = (v - 1 - shift) % length, (v - shift) % length
            out[j, v - 1] = (hi - lo if hi > lo else length - lo + hi) / length
    return out


def draw_masks(length: int, n: int, generator: torch.Generator, scheme: str = "uniform",
               llada_batch: int = 16) -> torch.Tensor:
    """[n, length] bool: row j masks l_j positions chosen uniformly at random."""
    counts = stratified_mask_counts(length, n, generator, scheme, llada_batch)
    # A random permutation per row via argsort of uniforms (one draw for all rows, same stream on any device).
    ranks = torch.rand(n, length, generator=generator, dtype=torch.float64).argsort(dim=1).argsort(dim=1)
    return ranks < counts.unsqueeze(1)
