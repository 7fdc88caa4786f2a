"""The usable sequence length per family (issue 26, item 1): RoBERTa-style position ids start after the padding
id, so `max_position_embeddings` overstates the length by pad_token_id + 1. Documents and prompts longer than the
window train (truncated) and fail in one line at evaluation, on RoBERTa, BERT, DistilBERT and ModernBERT."""

from __future__ import annotations

import json

import pytest

from emdm_core.errors import InputTooLongError
from emdm_models.tiny import build_tiny_checkpoint, train_tokenizer
from emdm_sampling import generate, load_denoiser

pytestmark = pytest.mark.usefixtures("one_thread")
WINDOW = 40


def _checkpoint(root, family: str):
    """A tiny masked LM of `family` whose config declares WINDOW positions."""
    if family in ("bert", "modernbert"):
        return build_tiny_checkpoint(root / family, family, max_length=WINDOW)
    from transformers import DistilBertConfig, DistilBertForMaskedLM, RobertaConfig, RobertaForMaskedLM

    tok = train_tokenizer()
    common = dict(vocab_size=len(tok), max_position_embeddings=WINDOW, pad_token_id=tok.pad_token_id)
    if family == "roberta":
        model = RobertaForMaskedLM(RobertaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                 intermediate_size=64, **common))
    else:
        model = DistilBertForMaskedLM(DistilBertConfig(dim=32, n_layers=1, n_heads=2, hidden_dim=64, **common))
    path = root / family
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.parametrize("family, usable", [("roberta", None), ("bert", WINDOW), ("distilbert", WINDOW),
                                            ("modernbert", WINDOW)])
def test_long_inputs_train_and_fail_in_one_line_at_the_window(tmp_path, family, usable):
    path = _checkpoint(tmp_path, family)
    den = load_denoiser(path)
    if usable is None:  # RoBERTa: positions pad_token_id + 1 .. WINDOW - 1
        usable = WINDOW - (den.pad_token_id + 1)
    assert den.max_length == usable
    prompt = [den.tokenizer.cls_token_id or 1] * (usable - 4)
    out = generate(den, [prompt], sampler="margin", steps=4, gen_length=4)  # exactly the window: runs
    assert len(out.sequences[0]) == usable
    with pytest.raises(InputTooLongError) as err:
        generate(den, [prompt + [prompt[0]]], sampler="margin", steps=4, gen_length=4)
    assert "\n" not in str(err.value) and "maximum length" in str(err.value)

    # training on documents longer than the window: truncated to it, a step runs
    from emdm_train.config import TrainConfig
    from emdm_train.trainer import train

    data = tmp_path / "long.jsonl"
    data.write_text("\n".join(json.dumps({"text": " ".join(["the cat sleeps on the mat ."] * 20)})
                              for _ in range(16)))
    cfg = TrainConfig(model=str(path), data=str(data), output=str(tmp_path / "run"), max_steps=2, batch_size=4,
                      eval_every=0, save_every=0, log_every=1, progress=False, val_split=0.0, report_to="none")
    result = train(cfg)
    assert result.history and all(r.get("loss") is None or r["loss"] == r["loss"] for r in result.history)
