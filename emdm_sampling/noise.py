"""What a position that is not yet decoded holds: the mask token (masked diffusion) or a random token (uniform-state).

The loop keeps one of these per `generate` call (`canvas_noise`). It answers which positions are still noisy, draws
noise when a row enters a block and when a strategy re-noises a position, and records which positions have
settled.

- `MaskNoise`: noisy = holds the mask token; re-noising writes the mask token back. Nothing to track: the tokens
  say it all (this is the loop as it was before uniform-state models, bit for bit).
- `UniformNoise` (Duo, DiffusionGemma): a noisy position holds a random token from the model's noise vocabulary, so
  the tokens cannot say which positions are decided; a `settled` flag per position does. A row's block is filled
  with fresh random tokens when the row enters it, and a re-noised position draws a new random token. The noise
  vocabulary is the diffusion's state space: ids outside it (a Duo model's [MASK], [PAD], ...) are never proposed.

Random tokens come from the loop's generators: the counter-based `CounterRNG` (batch-invariant), or, with
`rng=torch`, one `torch.Generator` per row, drawing as transformers' DiffusionGemma `generate` draws.
"""

from __future__ import annotations

import torch

from .rng import CounterRNG, TorchRowGenerators

_STREAM_BLOCK_NOISE = 6  # counter-rng streams (0-5: the loop's and the strategies')
_STREAM_RENOISE = 7


class MaskNoise:
    """Masked diffusion: the noise is the mask token."""

    uniform = False

    def __init__(self, mask_token_id: int):
        self.mask_token_id = int(mask_token_id)

    def noisy(self, tokens: torch.Tensor, fill: torch.Tensor, rows: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        """[b, W] bool: positions still to decode (of `tokens` / `fill`, the rows `rows` of the batch)."""
        return (tokens == self.mask_token_id) & fill

    def enter(self, tokens: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor, step: int) -> None:
        """Rows entering a block: their masks are already in place."""

    def settle(self, rows: torch.Tensor | slice, positions: torch.Tensor) -> None:
        """Positions that took a decided token: the token itself says so."""

    def renoise(self, tokens: torch.Tensor, rows: torch.Tensor | slice, positions: torch.Tensor,
                step: int) -> torch.Tensor:
        """`tokens` [b, W] (rows `rows`) with `positions` masked again."""
        return tokens.masked_fill(positions, self.mask_token_id)


class UniformNoise:
    """Uniform-state diffusion: noise is a token drawn uniformly from `vocabulary` ([K] ids)."""

    uniform = True

    def __init__(self, vocabulary: torch.Tensor, fill: torch.Tensor, rng: CounterRNG,
                 torch_rng: TorchRowGenerators | None = None):
        self.vocabulary = vocabulary.long().to(fill.device)
        self.settled = ~fill  # [B, W]: positions outside the fill never change
        self.outside: torch.Tensor | None = None  # [V - K] ids that are no state of the diffusion (never proposed)
        self.rng, self.torch_rng = rng, torch_rng

    def noisy(self, tokens: torch.Tensor, fill: torch.Tensor, rows: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        return ~self.settled[rows] & fill

    def random_tokens(self, rows: torch.Tensor | slice, positions: torch.Tensor, step: int,
                      stream: int = _STREAM_RENOISE, counter: bool = False) -> torch.Tensor:
        """[b, W] random tokens at `positions` (rows `rows`; other entries arbitrary). With per-row torch
        generators (and not `counter`), each row draws `randint(0, K, (1, n))` for its n positions, in column
        order."""
        if self.torch_rng is not None and not counter:
            return self.torch_rng.randint(rows, positions, len(self.vocabulary), self.vocabulary)
        u = self.rng.uniform(step, stream)[rows]
        index = (u * len(self.vocabulary)).long().clamp(max=len(self.vocabulary) - 1)
        return self.vocabulary[index]

    def enter(self, tokens: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor, step: int) -> None:
        """Rows `rows` entering a block: its noisy `positions` [b, W] start from fresh random tokens."""
        if len(rows) == 0:
            return
        sub = tokens[rows]
        tokens[rows] = torch.where(positions, self.random_tokens(rows, positions, step, _STREAM_BLOCK_NOISE), sub)

    def settle(self, rows: torch.Tensor | slice, positions: torch.Tensor) -> None:
        self.settled[rows] |= positions

    def renoise(self, tokens: torch.Tensor, rows: torch.Tensor | slice, positions: torch.Tensor,
                step: int) -> torch.Tensor:
        if not bool(positions.any()):
            return tokens
        self.settled[rows] &= ~positions
        return torch.where(positions, self.random_tokens(rows, positions, step), tokens)


def canvas_noise(denoiser, fill: torch.Tensor, rng: CounterRNG,
                 torch_rng: TorchRowGenerators | None) -> MaskNoise | UniformNoise:
    """The noise of `denoiser`'s diffusion (`denoiser.noise`: "mask" or "uniform")."""
    if getattr(denoiser, "noise", "mask") == "uniform":
        vocabulary = denoiser.noise_vocabulary
        if vocabulary is None:
            vocabulary = torch.arange(denoiser.vocab_size)
        noise = UniformNoise(vocabulary, fill, rng, torch_rng)
        states = torch.zeros(denoiser.vocab_size, dtype=torch.bool, device=fill.device)
        states[noise.vocabulary[noise.vocabulary < denoiser.vocab_size]] = True
        if not bool(states.all()):
            noise.outside = (~states).nonzero().flatten()
        return noise
    return MaskNoise(denoiser.mask_token_id)
