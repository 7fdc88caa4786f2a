"""Which noise a checkpoint was trained with, saved beside its config: `noise.json` (absent: masked diffusion).

Shared by training (`emdm_train --noise uniform` writes it) and inference (`load_denoiser` reads it, so the
sampler draws the same noise tokens the model was trained to undo):

    {"format": "emdm-noise-v1", "noise": "uniform", "vocabulary_size": V, "excluded": [special ids]}

The noise vocabulary is every id below `vocabulary_size` except `excluded` (the special tokens that never occur
where noise does: padding, [CLS], [SEP], the mask, ...).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import CheckpointError

FILENAME = "noise.json"
NOISES = ("mask", "uniform")


@dataclass(frozen=True)
class NoiseSpec:
    """A diffusion's noise: `mask`, or `uniform` over `vocabulary()`."""

    noise: str = "mask"
    vocabulary_size: int = 0
    excluded: tuple[int, ...] = field(default_factory=tuple)

    def vocabulary(self) -> torch.Tensor:
        """[K] the ids noise tokens are drawn from (ascending)."""
        keep = torch.ones(self.vocabulary_size, dtype=torch.bool)
        if self.excluded:
            keep[torch.tensor(sorted(self.excluded), dtype=torch.long)] = False
        return keep.nonzero().flatten()

    def save(self, directory: str | os.PathLike) -> Path:
        """Write `noise.json` into `directory` (atomically)."""
        path = Path(directory) / FILENAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"format": "emdm-noise-v1", "noise": self.noise,
                                   "vocabulary_size": self.vocabulary_size, "excluded": sorted(self.excluded)},
                                  indent=1))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "NoiseSpec | None":
        """The spec of a checkpoint directory; None when it has no `noise.json` (a masked-diffusion model)."""
        path = Path(directory) / FILENAME
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text())
            spec = cls(str(raw["noise"]), int(raw["vocabulary_size"]), tuple(int(i) for i in raw["excluded"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{path} is not an emdm noise file ({exc}); delete it for a masked-diffusion "
                                  f"model or retrain with emdm_train --noise uniform") from None
        if spec.noise not in NOISES:
            raise CheckpointError(f"{path}: unknown noise {spec.noise!r}; emdm knows {', '.join(NOISES)}")
        return spec
