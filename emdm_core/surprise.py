"""Unigram surprise table: S(x) = -log2 p(x), p estimated from a corpus' token counts with add-one smoothing.

Shared by training (surprise-weighted masking in `emdm_train`) and inference (the `surprise` sampler). A table is
saved beside a checkpoint's `config.json` as `surprise.safetensors` (tensors `surprise` float32 [V] and `counts`
int64 [V], plus string metadata) and read back with `SurpriseTable.load(checkpoint_dir)`.

Special tokens (pad, CLS, SEP, EOS, mask, ...) carry no surprise: S = 0, and their counts are left out of the
estimate of p, so that p is a distribution over the ordinary tokens:

    p(x) = (c(x) + 1) / (sum of ordinary counts + number of ordinary ids)      S(x) = -log2 p(x)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from .errors import EMDMError

FILENAME = "surprise.safetensors"


class SurpriseError(EMDMError, ValueError):
    """A surprise table cannot be built, saved or read (bad counts, corrupt file, mismatched vocabulary)."""


@dataclass
class SurpriseTable:
    """Token counts and the surprise S = -log2 p (bits) derived from them; `surprise[special] == 0`."""

    counts: torch.Tensor  # int64 [V]
    special_ids: list[int] = field(default_factory=list)
    smoothing: float = 1.0
    metadata: dict[str, str] = field(default_factory=dict)
    surprise: torch.Tensor = field(init=False)  # float32 [V]

    def __post_init__(self) -> None:
        counts = torch.as_tensor(self.counts).to(torch.int64).flatten().cpu()
        if counts.numel() == 0:
            raise SurpriseError("a surprise table needs a vocabulary of at least one token")
        if bool((counts < 0).any()):
            raise SurpriseError("token counts must be >= 0")
        if self.smoothing <= 0:
            raise SurpriseError(f"smoothing must be > 0 (got {self.smoothing}); 1.0 is add-one smoothing")
        self.counts = counts
        vocab = counts.numel()
        self.special_ids = sorted({int(i) for i in self.special_ids if 0 <= int(i) < vocab})
        special = self.special_mask
        ordinary = ~special
        n_ordinary = int(ordinary.sum())
        total = counts[ordinary].sum().double()
        p = (counts.double() + self.smoothing) / (total + self.smoothing * max(n_ordinary, 1))
        surprise = -torch.log2(p)
        surprise[special] = 0.0
        self.surprise = surprise.to(torch.float32)

    # -- properties -------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids the table covers."""
        return int(self.counts.numel())

    @property
    def special_mask(self) -> torch.Tensor:
        """Bool [V]: True at special-token ids."""
        mask = torch.zeros(self.vocab_size, dtype=torch.bool)
        if self.special_ids:
            mask[torch.tensor(self.special_ids, dtype=torch.long)] = True
        return mask

    @property
    def total_tokens(self) -> int:
        """Number of ordinary (non-special) tokens counted."""
        return int(self.counts[~self.special_mask].sum())

    def probabilities(self) -> torch.Tensor:
        """The smoothed unigram distribution p over ordinary ids (0 at special ids), float64 [V]."""
        special = self.special_mask
        p = self.counts.double() + self.smoothing
        p[special] = 0.0
        return p / p.sum()

    def entropy(self) -> float:
        """Shannon entropy H = sum p S of the smoothed unigram distribution, in bits."""
        p = self.probabilities()
        logp = torch.where(p > 0, torch.log2(p), torch.zeros_like(p))
        return float(-(p * logp).sum())

    def lookup(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Surprise of each id in `token_ids` (any shape), on the ids' device."""
        return self.surprise.to(token_ids.device)[token_ids]

    # -- construction -----------------------------------------------------------------------------------------
    @classmethod
    def from_token_batches(cls, batches: Iterable[Any], vocab_size: int, special_ids: Sequence[int] = (),
                           smoothing: float = 1.0, progress: bool = True, total: int | None = None,
                           desc: str = "counting tokens", metadata: dict[str, str] | None = None) -> "SurpriseTable":
        """Count ids with `torch.bincount` over batches (tensors, arrays or lists of id lists); ids < 0 are skipped."""
        from .progress import progress_bar

        if vocab_size <= 0:
            raise SurpriseError(f"vocab_size must be > 0 (got {vocab_size})")
        counts = torch.zeros(vocab_size, dtype=torch.int64)
        for batch in progress_bar(batches, desc=desc, total=total, enabled=progress, unit="batch"):
            ids = _flatten_ids(batch)
            if ids.numel() == 0:
                continue
            ids = ids[ids >= 0]
            top = int(ids.max()) if ids.numel() else -1
            if top >= vocab_size:
                raise SurpriseError(f"token id {top} is outside the vocabulary (size {vocab_size}); pass the "
                                    f"model's vocab_size")
            counts += torch.bincount(ids, minlength=vocab_size)
        meta = dict(metadata or {})
        return cls(counts, special_ids=list(special_ids), smoothing=smoothing, metadata=meta)

    @classmethod
    def from_dataset(cls, source: Any, tokenizer: Any, text_column: str = "text", split: str = "train",
                     batch_size: int = 1000, max_examples: int | None = None, vocab_size: int | None = None,
                     special_ids: Sequence[int] | None = None, smoothing: float = 1.0, streaming: bool = True,
                     progress: bool = True) -> "SurpriseTable":
        """Count a `datasets` source (hub name, local json/jsonl/text/parquet/csv file or folder, or a loaded
        `Dataset`/`IterableDataset`) tokenised with `tokenizer`, streaming in batches of `batch_size` texts."""
        ds = _open_source(source, split, streaming) if isinstance(source, (str, os.PathLike)) else source
        columns = getattr(ds, "column_names", None)
        if columns is not None and text_column not in columns:
            raise SurpriseError(f"column {text_column!r} not in dataset (columns: {', '.join(columns)}); pass the "
                                f"name of the text column")
        if vocab_size is None:
            vocab_size = len(tokenizer)
        if special_ids is None:
            special_ids = special_token_ids(tokenizer)

        def batches():
            seen = 0
            for rows in ds.iter(batch_size=batch_size):
                texts = [t for t in rows[text_column] if isinstance(t, str)]
                if max_examples is not None:
                    texts = texts[: max(0, max_examples - seen)]
                if not texts:
                    if max_examples is not None and seen >= max_examples:
                        return
                    continue
                seen += len(texts)
                yield tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]

        name = str(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__
        meta = {"source": name, "text_column": text_column, "split": split,
                "tokenizer": str(getattr(tokenizer, "name_or_path", ""))}
        table = cls.from_token_batches(batches(), vocab_size, special_ids, smoothing, progress,
                                       desc=f"counting {name}", metadata=meta)
        if table.total_tokens == 0:
            raise SurpriseError(f"no tokens counted from {name} (column {text_column!r}); check the source")
        return table

    # -- persistence ------------------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """Write `surprise.safetensors` into `directory` (atomically) and return its path."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {k: str(v) for k, v in self.metadata.items()}
        meta.update(format="emdm-surprise-v1", special_ids=json.dumps(self.special_ids),
                    smoothing=repr(float(self.smoothing)), total_tokens=str(self.total_tokens),
                    vocab_size=str(self.vocab_size), unit="bits")
        path = directory / FILENAME
        tmp = directory / (FILENAME + ".tmp")
        save_file({"surprise": self.surprise.contiguous(), "counts": self.counts.contiguous()}, str(tmp),
                  metadata=meta)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SurpriseTable | None":
        """Read the table from a checkpoint directory (or the file itself); None when there is none."""
        from safetensors import safe_open

        path = Path(path)
        file = path / FILENAME if path.is_dir() else path
        if not file.is_file():
            return None
        try:
            with safe_open(str(file), framework="pt") as f:
                meta = dict(f.metadata() or {})
                counts = f.get_tensor("counts")
                stored = f.get_tensor("surprise") if "surprise" in f.keys() else None
        except Exception as exc:  # safetensors raises several types for a corrupt file
            raise SurpriseError(f"cannot read {file}: {str(exc).splitlines()[0] if str(exc) else exc}; delete it "
                                f"or rebuild it with emdm_train") from None
        specials = json.loads(meta.pop("special_ids", "[]"))
        smoothing = float(meta.pop("smoothing", "1.0"))
        for key in ("format", "total_tokens", "vocab_size", "unit"):
            meta.pop(key, None)
        table = cls(counts, special_ids=specials, smoothing=smoothing, metadata=meta)
        if stored is not None and stored.shape == table.surprise.shape:
            table.surprise = stored.to(torch.float32)  # keep exactly what was saved
        return table

    def __repr__(self) -> str:
        return (f"SurpriseTable(vocab_size={self.vocab_size}, total_tokens={self.total_tokens}, "
                f"special_ids={len(self.special_ids)}, entropy={self.entropy():.2f} bits)")


def special_token_ids(tokenizer: Any, extra: Iterable[int | None] = ()) -> list[int]:
    """The tokenizer's special ids (pad, CLS, SEP, EOS, mask, added special tokens) plus `extra` ids."""
    ids = set(int(i) for i in (getattr(tokenizer, "all_special_ids", None) or []) if i is not None)
    ids.update(int(i) for i in extra if i is not None)
    return sorted(ids)


def _flatten_ids(batch: Any) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch.reshape(-1).to(torch.int64).cpu()
    if hasattr(batch, "__array__") and not isinstance(batch, (list, tuple)):
        import numpy as np

        return torch.from_numpy(np.asarray(batch, dtype=np.int64).reshape(-1))
    if isinstance(batch, (list, tuple)):
        if not batch:
            return torch.zeros(0, dtype=torch.int64)
        if isinstance(batch[0], (int,)) or hasattr(batch[0], "__index__"):
            return torch.tensor(batch, dtype=torch.int64)
        import itertools

        import numpy as np

        return torch.from_numpy(np.fromiter(itertools.chain.from_iterable(batch), dtype=np.int64))
    raise SurpriseError(f"cannot count a batch of type {type(batch).__name__}; give tensors or lists of ids")


_BUILDERS = {".json": "json", ".jsonl": "json", ".txt": "text", ".text": "text", ".parquet": "parquet",
             ".csv": "csv"}


def _open_source(source: str | os.PathLike, split: str, streaming: bool) -> Any:
    """Open a hub dataset name, a local file (by extension) or a local folder with `datasets.load_dataset`."""
    import datasets

    path = Path(os.path.expanduser(str(source)))
    try:
        if path.is_file():
            builder = _BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise SurpriseError(f"cannot tell the format of {path}; use .jsonl, .json, .txt, .parquet or .csv")
            return datasets.load_dataset(builder, data_files=str(path), split="train", streaming=streaming)
        return datasets.load_dataset(str(path) if path.is_dir() else str(source), split=split, streaming=streaming)
    except SurpriseError:
        raise
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SurpriseError(f"cannot load dataset {source!s}: {first}") from None
