"""How a prompt becomes token ids, the same at fine-tuning and at evaluation (and how a chat template is read).

`emdm_train` builds a prompt/response row as tokenizer(prompt) with the tokenizer's own special tokens (its
post-processor: BERT's [CLS] ... [SEP], the Sudoku tokenizer's trailing [SEP]) + the run's separator + response +
EOS, and records the recipe (`emdm_train_config.yaml`) beside the weights. `emdm_eval` reads that recipe so a
fine-tuned checkpoint is prompted exactly as it was trained (`prompt_format=auto`); a model that never saw a
[SEP] before its answer would otherwise decode from a shifted, unfamiliar layout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

RECIPE_FILE = "emdm_train_config.yaml"


def encode_prompts(tokenizer: Any, prompts: Sequence[str], separator: str | None) -> list[list[int]]:
    """The prompt part of prompt/response rows: each prompt with the tokenizer's special tokens, then the
    separator's ids (no special tokens of its own)."""
    sep = list(tokenizer(separator, add_special_tokens=False)["input_ids"]) if separator else []
    ids = tokenizer(list(prompts), add_special_tokens=True, return_attention_mask=False, verbose=False)["input_ids"]
    return [list(p) + sep for p in ids]


def bos_id(tokenizer: Any) -> int | None:
    """The id lm-eval's convention puts in front of a prompt: the tokenizer's BOS, else its CLS, else None."""
    for name in ("bos_token_id", "cls_token_id"):
        tid = getattr(tokenizer, name, None)
        if tid is not None:
            return int(tid)
    return None


def prompt_ids(tokenizer: Any, text: str, prompt_format: str = "auto", recorded: "TrainingPrompts | None" = None,
               add_bos: bool = True) -> list[int]:
    """A generation prompt's ids, the same for every entry point (`python -m emdm_sampling`, lm-eval): `tokenizer`
    encodes it as emdm_train built a checkpoint's prompt/response rows (`recorded`: its recipe), `bos` with the
    BOS (or CLS) id in front (lm-eval's convention; `add_bos=False`: the text's ids alone); `auto` is `tokenizer`
    for a checkpoint fine-tuned on prompt/response rows, else `bos`."""
    if prompt_format == "auto":
        prompt_format = "tokenizer" if recorded is not None else "bos"
    if prompt_format == "tokenizer":
        return encode_prompts(tokenizer, [text], recorded.separator if recorded is not None else None)[0]
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = bos_id(tokenizer)
    if not add_bos or bos is None or ids[:1] == [bos]:
        return ids
    return [bos] + ids


@dataclass(frozen=True)
class TrainingPrompts:
    """How the prompts of a checkpoint's fine-tuning data were encoded (from its recipe)."""

    separator: str | None
    recipe: Path


def training_recipe(*directories: str | os.PathLike | None) -> tuple[dict[str, Any], Path] | None:
    """(the recipe, its path) `emdm_train` recorded in the first of `directories` that holds one, or None."""
    import yaml

    for directory in directories:
        if directory is None:
            continue
        path = Path(directory) / RECIPE_FILE
        try:
            if not path.is_file():
                continue
        except OSError:  # a Hub id that is no valid path
            continue
        return yaml.safe_load(path.read_text()) or {}, path
    return None


def training_prompts(*directories: str | os.PathLike | None) -> TrainingPrompts | None:
    """The prompt encoding recorded by `emdm_train` in the first of `directories` that holds a recipe, when that
    run trained on prompt/response rows; None for any other checkpoint (text or chat data, or not emdm_train's)."""
    found = training_recipe(*directories)
    if found is None or found[0].get("data_format") != "prompt_response":
        return None
    return TrainingPrompts(separator=found[0].get("separator"), recipe=found[1])


def training_sampler_options(*directories: str | os.PathLike | None) -> dict[str, dict[str, Any]]:
    """{sampler: {option: value}} that a checkpoint's training recipe implies for decoding: a model trained with
    `--masking surprise` decodes with `sampler=surprise` in the order and temperature it was trained for (the
    recipe's `surprise_direction` / old `surprise_mask_first` / `masking_options`, defaults low_first and 1.0)."""
    found = training_recipe(*directories)
    if found is None or found[0].get("masking") != "surprise":
        return {}
    recipe = found[0]
    options = recipe.get("masking_options") or {}
    old = {"high": "low_first", "low": "high_first"}.get(str(recipe.get("surprise_mask_first")))
    direction = options.get("direction") or recipe.get("surprise_direction") or old or "low_first"
    temperature = options.get("temperature") or recipe.get("surprise_temperature") or 1.0
    return {"surprise": {"surprise_direction": str(direction), "surprise_temperature": float(temperature)}}


def read_chat_template(value: str) -> str:
    """A Jinja chat template given as a file path or as the template itself (`--chat-template`,
    `chat_template=`)."""
    path = Path(os.path.expanduser(value))
    try:
        is_file = path.is_file()
    except OSError:  # a long template string is no valid path
        is_file = False
    return path.read_text(encoding="utf-8") if is_file else value
