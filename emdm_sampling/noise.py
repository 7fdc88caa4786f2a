"""What a position that is not yet decoded holds: the mask token (masked diffusion) or a random token (uniform-state).

A decode session keeps one of these (`canvas_noise`): the one interface through which it starts the canvas,
answers which positions are still noisy, draws noise when a row enters a block or a strategy re-noises a position,
records which positions have settled, restricts the proposals to the diffusion's states, and writes the tokens of
positions that stay noisy. The session itself has no masked / uniform branches.

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

from typing import Callable

import torch

from emdm_core.contract import ModelContract
from emdm_core.errors import ConfigError
from emdm_models.denoiser import Denoiser

from .proposals import per_position
from .rng import CounterRNG, TorchRowGenerators


class MaskNoise:
    """Masked diffusion: the noise is the mask token."""

    uniform = False
    vocabulary: torch.Tensor | None = None

    def __init__(self, mask_token_id: int):
        self.mask_token_id = int(mask_token_id)

    @property
    def excluded_token(self) -> int | None:
        """A token the model is never asked for (`StepContext.logits` puts it at -inf): the mask."""
        return self.mask_token_id

    def start(self, tokens: torch.Tensor, fill: torch.Tensor) -> None:
        """The canvas starts as laid out: masks where anything is decoded."""

    def noisy(self, tokens: torch.Tensor, fill: torch.Tensor, rows: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        """[b, W] bool: positions still to decode (of `tokens` / `fill`, the rows `rows` of the batch)."""
        return (tokens == self.mask_token_id) & fill

    def enter(self, tokens: torch.Tensor, entering: torch.Tensor, positions: torch.Tensor, step: int) -> None:
        """Rows entering a block ([B] bool): their masks are already in place."""

    def proposal_logits(self, flat_logits: torch.Tensor, temperature: float | torch.Tensor, tempered: bool,
                        scored: torch.Tensor) -> tuple[torch.Tensor, float | torch.Tensor]:
        """(logits every statistic reads, the temperature proposals are still drawn at): the mask token is never
        proposed (the lowest finite logit: probability exactly 0, and no inf * 0 = NaN in vocabulary sums such as
        the entropy)."""
        flat_logits[:, self.mask_token_id] = torch.finfo(flat_logits.dtype).min
        return flat_logits, temperature

    def drawer(self, rows: torch.Tensor | slice, step: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """What a strategy calls to draw noise tokens for positions of this step's rows (masked: none)."""
        return None

    def keep_noisy(self, new_tokens: torch.Tensor, staying: torch.Tensor, noisy_tokens: torch.Tensor | None,
                   sampler: str, family: str) -> torch.Tensor:
        """Positions that stay noisy keep the mask: a strategy that sets their tokens is for uniform-state models."""
        if noisy_tokens is not None:
            raise ConfigError(f"sampler {sampler!r} is for uniform-state models (Duo, DiffusionGemma); {family} is "
                              f"a masked-diffusion model: use margin, top_prob, entropy, ...")
        return new_tokens

    def settle(self, rows: torch.Tensor | slice, positions: torch.Tensor) -> None:
        """Positions that took a decided token: the token itself says so."""

    def renoise(self, tokens: torch.Tensor, rows: torch.Tensor | slice, positions: torch.Tensor,
                step: int) -> torch.Tensor:
        """`tokens` [b, W] (rows `rows`) with `positions` masked again."""
        return tokens.masked_fill(positions, self.mask_token_id)


class UniformNoise:
    """Uniform-state diffusion: noise is a token drawn uniformly from `vocabulary` ([K] ids)."""

    uniform = True
    excluded_token = None

    def __init__(self, vocabulary: torch.Tensor, fill: torch.Tensor, rng: CounterRNG,
                 torch_rng: TorchRowGenerators | None = None):
        self.vocabulary = vocabulary.long().to(fill.device)
        self.settled = ~fill  # [B, W]: positions outside the fill never change
        self.outside: torch.Tensor | None = None  # [V - K] ids that are no state of the diffusion (never proposed)
        self.rng, self.torch_rng = rng, torch_rng

    def start(self, tokens: torch.Tensor, fill: torch.Tensor) -> None:
        """Every position to decode starts as noise (each block is drawn afresh again when a row enters it)."""
        tokens.copy_(torch.where(fill, self.random_tokens(slice(None), fill, 0, "start_noise", counter=True), tokens))

    def noisy(self, tokens: torch.Tensor, fill: torch.Tensor, rows: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        return ~self.settled[rows] & fill

    def random_tokens(self, rows: torch.Tensor | slice, positions: torch.Tensor, step: int,
                      stream: str = "renoise", counter: bool = False) -> torch.Tensor:
        """[b, W] random tokens at `positions` (rows `rows`; other entries arbitrary). With per-row torch
        generators (and not `counter`), each row draws `randint(0, K, (1, n))` for its n positions, in column
        order."""
        if self.torch_rng is not None and not counter:
            return self.torch_rng.randint(rows, positions, len(self.vocabulary), self.vocabulary)
        u = self.rng.uniform(step, stream)[rows]
        index = (u * len(self.vocabulary)).long().clamp(max=len(self.vocabulary) - 1)
        return self.vocabulary[index]

    def enter(self, tokens: torch.Tensor, entering: torch.Tensor, positions: torch.Tensor, step: int) -> None:
        """Rows entering a block ([B] bool): the block's noisy `positions` [B, W] start from fresh random tokens."""
        if not bool(entering.any()):
            return
        rows = entering.nonzero().flatten()
        sub, where = tokens[rows], positions[rows]
        tokens[rows] = torch.where(where, self.random_tokens(rows, where, step, "block_noise"), sub)

    def proposal_logits(self, flat_logits: torch.Tensor, temperature: float | torch.Tensor, tempered: bool,
                        scored: torch.Tensor) -> tuple[torch.Tensor, float | torch.Tensor]:
        """Every statistic reads the tempered distribution (`tempered`: temperature > 0; proposals are then drawn
        at 1), and nothing outside the noise vocabulary (the diffusion's states) is proposed."""
        if tempered:
            flat_logits = flat_logits / per_position(temperature, scored)
            temperature = 1.0
        if self.outside is not None:
            flat_logits[:, self.outside] = torch.finfo(flat_logits.dtype).min
        return flat_logits, temperature

    def drawer(self, rows: torch.Tensor | slice, step: int) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda positions: self.random_tokens(rows, positions, step)

    def keep_noisy(self, new_tokens: torch.Tensor, staying: torch.Tensor, noisy_tokens: torch.Tensor | None,
                   sampler: str, family: str) -> torch.Tensor:
        """Positions that stay noisy take the strategy's tokens (accepted proposals, renoised draws)."""
        return new_tokens if noisy_tokens is None else torch.where(staying, noisy_tokens, new_tokens)

    def settle(self, rows: torch.Tensor | slice, positions: torch.Tensor) -> None:
        self.settled[rows] |= positions

    def renoise(self, tokens: torch.Tensor, rows: torch.Tensor | slice, positions: torch.Tensor,
                step: int) -> torch.Tensor:
        if not bool(positions.any()):
            return tokens
        self.settled[rows] &= ~positions
        return torch.where(positions, self.random_tokens(rows, positions, step), tokens)


def canvas_noise(contract: ModelContract, denoiser: Denoiser, fill: torch.Tensor, rng: CounterRNG,
                 torch_rng: TorchRowGenerators | None) -> MaskNoise | UniformNoise:
    """The noise of the model's diffusion (`contract.noise`: "mask" or "uniform")."""
    if contract.noise == "uniform":
        vocab_size = denoiser.vocab_size
        vocabulary = contract.noise_vocabulary
        if vocabulary is None:
            vocabulary = torch.arange(vocab_size)
        noise = UniformNoise(vocabulary, fill, rng, torch_rng)
        states = torch.zeros(vocab_size, dtype=torch.bool, device=fill.device)
        states[noise.vocabulary[noise.vocabulary < vocab_size]] = True
        if not bool(states.all()):
            noise.outside = (~states).nonzero().flatten()
        return noise
    return MaskNoise(denoiser.mask_token_id)
