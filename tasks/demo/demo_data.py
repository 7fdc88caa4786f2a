"""Loaders for emdm's offline demo tasks: each reads the JSONL file next to this module.

Paths are resolved from `__file__`, so the tasks work from any working directory and from an installed wheel
(lm-eval resolves a relative `data_files` path against the working directory, not the YAML, so the YAMLs use
`custom_dataset` instead). The data stays in memory: no `datasets` cache, no download.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _load(name: str):
    import datasets

    rows = [json.loads(line) for line in (HERE / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def load_gen(**kwargs):
    """Short completions (generate_until)."""
    return _load("emdm_demo_gen")


def load_mc(**kwargs):
    """Four-way multiple choice (loglikelihood)."""
    return _load("emdm_demo_mc")


def load_ppl(**kwargs):
    """Texts for rolling perplexity (loglikelihood_rolling); one is longer than the tiny models' 128 tokens."""
    return _load("emdm_demo_ppl")
