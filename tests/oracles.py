"""Tiny random checkpoints built from the reference LLaDA and Dream code in ../shared/oracles (test oracles only).

`oracle_checkpoint(family, path)` copies the family's reference modelling files next to its tiny config, builds the
model with `trust_remote_code`, initialises it (output rows of ids the tokenizer does not have get zero weight, so
predictions stay on real tokens), saves it with a tokenizer and returns (path, reference model, tokenizer).
Tests that use it skip with the reason when the folder (or the LLaDA code's `einops`) is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ORACLES = Path(os.environ.get("EMDM_ORACLES", ROOT.parent / "shared" / "oracles"))


def require(family: str) -> Path:
    """The oracle folder of `family`, or skip the test saying what is missing."""
    folder = ORACLES / family
    if not (folder / "tiny_config.json").is_file():
        pytest.skip(f"reference code not available: {folder} is missing (the oracles live in ../shared/oracles; "
                    f"set EMDM_ORACLES to their folder)")
    if family == "llada" and importlib.util.find_spec("einops") is None:
        pytest.skip("the LLaDA reference code needs einops: pip install einops")
    return folder


def oracle_checkpoint(family: str, path: Path, seed: int = 0, std: float = 0.3, edit=None):
    """(checkpoint path, the reference model loaded from it, tokenizer) for a tiny random `family` model;
    `edit(model, tokenizer)` may change the weights before they are saved."""
    from transformers import AutoConfig, AutoModel

    from emdm_models.tiny import DEMO_CORPUS, train_tokenizer

    folder = require(family)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(DEMO_CORPUS, with_mask=family == "dream")
    config = json.loads((folder / "tiny_config.json").read_text())
    if family == "dream":  # the tokenizer's special ids (the tiny config's are placeholders)
        config.update(mask_token_id=tok.mask_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.cls_token_id)
    (path / "config.json").write_text(json.dumps(config))
    for code in folder.glob("*.py"):
        shutil.copy(code, path)
    torch.manual_seed(seed)
    model = AutoModel.from_config(AutoConfig.from_pretrained(path, trust_remote_code=True), trust_remote_code=True)
    with torch.no_grad():
        for _name, p in model.named_parameters():
            if p.dim() > 1:
                torch.nn.init.normal_(p, std=std)
        model.get_output_embeddings().weight[len(tok):] = 0
        if edit is not None:
            edit(model, tok)
    model.save_pretrained(path)
    for code in folder.glob("*.py"):  # save_pretrained may drop the code files
        shutil.copy(code, path)
    tok.save_pretrained(path)
    reference = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
    return path, reference, tok


def llada_decoders():
    """The reference decoders: LLaDA's `generate` and Fast-dLLM's prefix / dual cache variants."""
    folder = require("llada")
    spec = importlib.util.spec_from_file_location("emdm_oracle_llada_generate", folder / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def dream_generation_config(reference, **kwargs):
    """A `DreamGenerationConfig` of the reference code (passed explicitly: building one from the model config
    fails under transformers 5)."""
    return sys.modules[type(reference).__module__].DreamGenerationConfig(**kwargs)
