"""Training data: load any `datasets` source, tokenise, pack or pad, split off a held-out set.

Three formats:
- `text`: one document per row in a text column. With packing (default) each document is tokenised (with the
  tokenizer's own special tokens), ended by EOS and concatenated; the stream is cut into `max_length` blocks.
  Without packing each document is one row, truncated to `max_length`.
- `prompt_response`: rows with a prompt and a response field. A row is  tokenizer(prompt) + separator +
  response + EOS; the prompt part (everything before the response) is never masked, as in instruction tuning
  and Sudoku. Rows longer than `max_length` lose the end of their response; rows whose prompt alone does not fit
  are dropped (both counted in the log). `pad_with_eos` fills each row to `max_length` with trained EOS tokens.
- `chat`: rows with a `messages` list, rendered with the chat template; only assistant turns are trained on
  (`chat.py`; a per-token `trainable` array replaces the prompt rule).

Tokenised data lives in memory as one flat int32 array plus offsets (4 bytes a token).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from emdm_core.errors import first_line
from emdm_core.paths import looks_local
from emdm_core.prompts import encode_prompts
from emdm_models.denoiser import config_max_length
from emdm_models.loading import eos_token_id

from .errors import DataError

logger = logging.getLogger(__name__)

_BUILDERS = {".json": "json", ".jsonl": "json", ".txt": "text", ".text": "text", ".parquet": "parquet",
             ".csv": "csv"}


@dataclass
class TokenData:
    """Tokenised sequences: `tokens[offsets[i]:offsets[i+1]]` is row i; its first `prompt_lengths[i]` tokens are
    the prompt."""

    tokens: np.ndarray  # int32 [total]
    offsets: np.ndarray  # int64 [N + 1]
    prompt_lengths: np.ndarray  # int32 [N]
    # bool [total], chat data: the tokens that may be masked (assistant turns), overriding the prompt and
    # special-token rules; None: every non-special token after the prompt
    trainable: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Length of every row."""
        return np.diff(self.offsets)

    def row(self, i: int) -> np.ndarray:
        """Token ids of row i."""
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]

    def head(self, n: int) -> "TokenData":
        """The first n rows."""
        n = min(n, len(self))
        end = self.offsets[n]
        return TokenData(self.tokens[:end], self.offsets[: n + 1].copy(), self.prompt_lengths[:n].copy(),
                         None if self.trainable is None else self.trainable[:end].copy())

    def maskable_counts(self, unmaskable: np.ndarray) -> np.ndarray:
        """Number of maskable tokens per row (not in the `unmaskable` id table, not in the prompt; chat data: the
        trainable tokens), vectorised."""
        ok = ~unmaskable[self.tokens] if self.trainable is None else self.trainable
        csum = np.concatenate([[0], np.cumsum(ok, dtype=np.int64)])
        starts = self.offsets[:-1] + self.prompt_lengths
        return csum[self.offsets[1:]] - csum[np.minimum(starts, self.offsets[1:])]

    def collate(self, indices: Iterable[int], pad_token_id: int,
                length: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded (input_ids [b, L], attention_mask [b, L], prompt_lengths [b]) for the given rows; L is the
        longest row unless `length` is given."""
        idx = np.asarray(list(indices), dtype=np.int64)
        lens = self.lengths[idx]
        width = int(lens.max()) if length is None else int(length)
        ids = np.full((len(idx), width), pad_token_id, dtype=np.int64)
        for r, i in enumerate(idx):  # one slice copy per row
            row = self.row(int(i))
            ids[r, : len(row)] = row
        attn = (np.arange(width)[None, :] < lens[:, None]).astype(np.int64)
        return torch.from_numpy(ids), torch.from_numpy(attn), torch.from_numpy(self.prompt_lengths[idx].astype(
            np.int64))

    def collate_trainable(self, indices: Iterable[int], width: int) -> torch.Tensor | None:
        """[b, width] bool: the trainable tokens of the rows (chat data), False in the padding; None without."""
        if self.trainable is None:
            return None
        idx = np.asarray(list(indices), dtype=np.int64)
        out = np.zeros((len(idx), width), dtype=bool)
        for r, i in enumerate(idx):  # one slice copy per row
            part = self.trainable[self.offsets[i]:self.offsets[i + 1]]
            out[r, : len(part)] = part
        return torch.from_numpy(out)


@dataclass
class DataBundle:
    """Train and held-out data plus what was done to build them."""

    train: TokenData
    val: TokenData | None
    format: str
    max_length: int
    stats: dict[str, Any] = field(default_factory=dict)


# --- loading -------------------------------------------------------------------------------------------------


def load_source(source: str, split: str = "train", config_name: str | None = None) -> Any:
    """Load a local file (by extension), a local folder or a hub dataset as a map-style `datasets.Dataset`."""
    import datasets

    path = Path(os.path.expanduser(str(source)))
    try:
        if path.is_file():
            builder = _BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise DataError(f"cannot tell the format of {source}; use a .jsonl, .json, .txt, .parquet or .csv "
                                f"file")
            if path.stat().st_size == 0:
                raise DataError(f"dataset {source} is empty; give a file with at least two documents")
            return datasets.load_dataset(builder, data_files=str(path), split="train")
        if path.is_dir():
            return datasets.load_dataset(str(path), split=split)
        if looks_local(str(source)) or path.suffix.lower() in _BUILDERS:
            raise DataError(f"dataset {source} does not exist; give a local .jsonl/.txt/.parquet file, a folder, or "
                            f"a hub dataset name")
        return datasets.load_dataset(str(source), config_name, split=split)
    except DataError:
        raise
    except ValueError as exc:
        if "split" in str(exc).lower() or "Unknown split" in str(exc):
            raise DataError(f"dataset {source} has no split {split!r}: {first_line(exc)}; pass --split NAME") \
                from None
        raise DataError(f"cannot load dataset {source}: {first_line(exc)}") from None
    except Exception as exc:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ...)
        raise DataError(f"cannot load dataset {source}: {first_line(exc)}; give a local .jsonl/.txt/.parquet file, "
                        f"a folder, or a hub dataset that is in the local cache (HF_DATASETS_OFFLINE=1)") from None


def detect_format(columns: list[str], requested: str, text_column: str, prompt_field: str, response_field: str,
                  source: str, messages_field: str = "messages") -> str:
    """Resolve `auto` and check that the needed columns exist."""
    cols = ", ".join(columns)
    fmt = requested
    if fmt == "auto":
        fmt = ("chat" if messages_field in columns else
               "prompt_response" if prompt_field in columns and response_field in columns else "text")
    if fmt == "chat" and messages_field not in columns:
        raise DataError(f"column {messages_field!r} not in {source} (columns: {cols}); pass --messages-field NAME")
    if fmt == "text" and text_column not in columns:
        raise DataError(f"column {text_column!r} not in {source} (columns: {cols}); pass --text-column NAME, or "
                        f"--prompt-field/--response-field for prompt/response data")
    if fmt == "prompt_response":
        for flag, name in (("--prompt-field", prompt_field), ("--response-field", response_field)):
            if name not in columns:
                raise DataError(f"column {name!r} not in {source} (columns: {cols}); pass {flag} NAME")
    return fmt


def _batches(ds: Any, columns: list[str], batch_size: int = 1000) -> Iterator[dict[str, list]]:
    view = ds.select_columns(columns)
    for start in range(0, len(view), batch_size):
        yield view[start:start + batch_size]


def tokenize_text(ds: Any, tokenizer: Any, column: str, max_length: int, pack: bool, add_eos: bool,
                  progress: bool = False, desc: str = "tokenising") -> tuple[TokenData, dict[str, int]]:
    """Tokenise a text column; pack into `max_length` blocks or keep one (truncated) row per document."""
    from emdm_core.progress import progress_bar

    end = eos_token_id(tokenizer) if add_eos else None
    docs: list[np.ndarray] = []
    truncated = not_text = 0
    with progress_bar(total=len(ds), desc=desc, enabled=progress, unit="doc") as bar:
        for rows in _batches(ds, [column]):
            not_text += sum(not isinstance(t, str) for t in rows[column])
            texts = [t for t in rows[column] if isinstance(t, str) and t.strip()]
            bar.update(len(rows[column]))
            if not texts:
                continue
            for ids in tokenizer(texts, add_special_tokens=True, return_attention_mask=False,
                                 verbose=False)["input_ids"]:
                if end is not None and (not ids or ids[-1] != end):
                    ids = ids + [end]
                if not pack and len(ids) > max_length:
                    ids = ids[:max_length]
                    truncated += 1
                docs.append(np.asarray(ids, dtype=np.int32))
    if not docs:
        return (TokenData(np.zeros(0, np.int32), np.zeros(1, np.int64), np.zeros(0, np.int32)),
                {"documents": 0, "not_text": not_text})
    if pack:
        tokens = np.concatenate(docs)
        offsets = np.append(np.arange(0, len(tokens), max_length, dtype=np.int64), len(tokens))
    else:
        tokens = np.concatenate(docs)
        offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs], dtype=np.int64)])
    data = TokenData(tokens, offsets, np.zeros(len(offsets) - 1, dtype=np.int32))
    return data, {"documents": len(docs), "rows": len(data), "tokens": int(len(tokens)), "truncated": truncated,
                  "not_text": not_text}


def tokenize_prompt_response(ds: Any, tokenizer: Any, prompt_field: str, response_field: str, max_length: int,
                             separator: str | None, add_eos: bool, progress: bool = False,
                             desc: str = "tokenising", pad_with_eos: bool = False) -> tuple[TokenData, dict[str, int]]:
    """Tokenise prompt/response rows: prompt (with the tokenizer's special tokens) + separator + response + EOS
    (`pad_with_eos`: EOS up to `max_length`, LLaDA's SFT rows)."""
    from emdm_core.progress import progress_bar

    end = eos_token_id(tokenizer) if add_eos or pad_with_eos else None
    if pad_with_eos and end is None:
        raise DataError("--pad-with-eos needs an EOS token; this tokenizer has none")
    rows_out: list[np.ndarray] = []
    prompt_lens: list[int] = []
    truncated = dropped = 0
    with progress_bar(total=len(ds), desc=desc, enabled=progress, unit="row") as bar:
        for rows in _batches(ds, [prompt_field, response_field]):
            prompts = ["" if p is None else str(p) for p in rows[prompt_field]]
            responses = ["" if r is None else str(r) for r in rows[response_field]]
            bar.update(len(prompts))
            p_ids = encode_prompts(tokenizer, prompts, separator)  # as emdm_eval prompts the checkpoint
            r_ids = tokenizer(responses, add_special_tokens=False, return_attention_mask=False, verbose=False)
            for p, r in zip(p_ids, r_ids["input_ids"]):
                r = list(r) + ([end] if end is not None else [])
                if len(p) >= max_length:
                    dropped += 1
                    continue
                if len(p) + len(r) > max_length:
                    r = r[: max_length - len(p)]
                    truncated += 1
                if pad_with_eos:
                    r = r + [end] * (max_length - len(p) - len(r))
                rows_out.append(np.asarray(p + r, dtype=np.int32))
                prompt_lens.append(len(p))
    if not rows_out:
        return (TokenData(np.zeros(0, np.int32), np.zeros(1, np.int64), np.zeros(0, np.int32)),
                {"rows": 0, "dropped": dropped})
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows_out], dtype=np.int64)])
    data = TokenData(np.concatenate(rows_out), offsets, np.asarray(prompt_lens, dtype=np.int32))
    return data, {"rows": len(data), "tokens": int(offsets[-1]), "truncated": truncated, "dropped": dropped}


def default_max_length(model_config: Any, requested: int | None, cap: int = 512) -> int:
    """`requested`, else the model's maximum position count capped at `cap`."""
    if requested is not None:
        limit = config_max_length(model_config)
        if limit and requested > limit:
            raise DataError(f"--max-length {requested} exceeds the model's maximum of {limit} positions; pass "
                            f"--max-length {limit} or less")
        return int(requested)
    limit = config_max_length(model_config)
    return int(min(limit, cap)) if limit else cap


def prepare_data(cfg: Any, tokenizer: Any, model_config: Any, progress: bool = True) -> DataBundle:
    """Load `cfg.data` (and `cfg.val_data`), tokenise it and split off the held-out rows (by document)."""
    max_length = default_max_length(model_config, cfg.max_length)
    ds = load_source(cfg.data, cfg.split, cfg.data_config)
    if len(ds) == 0:
        raise DataError(f"dataset {cfg.data} has no examples in split {cfg.split!r}; check the path and --split")
    fmt = detect_format(list(ds.column_names), cfg.data_format, cfg.text_column, cfg.prompt_field,
                        cfg.response_field, cfg.data, cfg.messages_field)
    if fmt == "chat":
        from .chat import resolve_template

        resolve_template(tokenizer, cfg.chat_template)
    if cfg.max_examples is not None:
        ds = ds.select(range(min(len(ds), cfg.max_examples)))
    val_ds = None
    if cfg.val_data:
        val_ds = load_source(cfg.val_data, "validation" if not Path(cfg.val_data).is_file() else "train",
                             cfg.data_config)
        detect_format(list(val_ds.column_names), fmt, cfg.text_column, cfg.prompt_field, cfg.response_field,
                      cfg.val_data, cfg.messages_field)
    elif cfg.val_split > 0:
        if len(ds) < 2:
            raise DataError(f"dataset {cfg.data} has only {len(ds)} document; hold-out needs at least 2 (pass "
                            f"--val-data SOURCE or --val-split 0)")
        n_val = min(len(ds) - 1, max(1, round(cfg.val_split * len(ds))))
        perm = np.random.default_rng(cfg.seed).permutation(len(ds))
        val_ds = ds.select(np.sort(perm[:n_val]))
        ds = ds.select(np.sort(perm[n_val:]))

    pack = cfg.pack if cfg.pack is not None else True

    def tok(d: Any, desc: str) -> tuple[TokenData, dict[str, int]]:
        if fmt == "text":
            return tokenize_text(d, tokenizer, cfg.text_column, max_length, pack, cfg.add_eos, progress, desc)
        if fmt == "chat":
            from .chat import tokenize_chat

            return tokenize_chat(d, tokenizer, cfg.messages_field, max_length, eos_token_id(tokenizer),
                                 cfg.pad_with_eos, progress, desc)
        return tokenize_prompt_response(d, tokenizer, cfg.prompt_field, cfg.response_field, max_length,
                                        cfg.separator, cfg.add_eos, progress, desc, cfg.pad_with_eos)

    train, train_stats = tok(ds, "tokenising train")
    if len(train) == 0:
        what = (f"column {cfg.text_column!r}" if fmt == "text" else "chat rows with an assistant turn" if fmt == "chat"
                else "prompt/response rows that fit --max-length")
        raise DataError(f"dataset {cfg.data} has no usable examples ({what}); check the data, or raise "
                        f"--max-length")
    val = None
    stats: dict[str, Any] = {"train": train_stats}
    if val_ds is not None:
        val, stats["val"] = tok(val_ds, "tokenising held-out")
        if len(val) == 0:
            val = None
        elif len(val) > cfg.max_eval_examples:
            val = val.head(cfg.max_eval_examples)
    return DataBundle(train=train, val=val, format=fmt, max_length=max_length, stats=stats)
