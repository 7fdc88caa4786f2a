"""lm-eval helpers for the addition tasks: load a JSONL set of `studies.addition.generate` and score sums.

Scoring rule for a generation (README.md): whitespace is removed; the answer is the leading run of digits (text
after it, an end marker, is ignored); `exact_match` = 1 when it equals the reference sum digit for digit (all
`digits + 1` of them, leading zero included); `digit_acc` = the share of the reference's digits matched at the same
place (places past the end of a short answer count as wrong).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent / "data"
DATA_ENV = "EMDM_ADDITION_DATA"  # a JSONL file of the generator to evaluate on instead of the committed set
_LEADING_DIGITS = re.compile(r"[0-9]*")
_WHITESPACE = re.compile(r"\s+")


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSONL set (a name in this task's data folder, or any path)."""
    path = Path(path)
    path = path if path.is_absolute() or path.is_file() else DATA_DIR / path
    if not path.is_file():
        raise FileNotFoundError(f"addition data file {path} is missing; write one with "
                                "`python -m studies.addition.generate --seed N --n K --out FILE`")
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


def load_dataset(data_file: str = "test.jsonl", **_: Any):
    """`custom_dataset` hook: a DatasetDict with one `test` split; the file named by $EMDM_ADDITION_DATA wins, so a
    freshly generated held-out set runs through the same task (`EMDM_ADDITION_DATA=fresh.jsonl lm_eval ...`)."""
    import datasets

    rows = [{k: r[k] for k in ("prompt", "response")} for r in read_jsonl(os.environ.get(DATA_ENV) or data_file)]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def parse_answer(text: str) -> str:
    """The leading run of digits of a generation, whitespace ignored."""
    return _LEADING_DIGITS.match(_WHITESPACE.sub("", text)).group(0)


def score(reference: str, generation: str) -> dict[str, float]:
    """{'exact_match', 'digit_acc'} of one generation against the reference sum."""
    answer = parse_answer(generation)
    return {"exact_match": float(answer == reference),
            "digit_acc": sum(a == r for a, r in zip(answer, reference)) / len(reference)}


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """lm-eval hook: score the first generation of a document."""
    return score(doc["response"], results[0] if results else "")
