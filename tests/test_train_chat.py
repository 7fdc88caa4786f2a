"""Chat-format data (`messages`): rendered with a hand-built chat template, only assistant turns masked, several
turns, LLaDA's EOS padding; and a real training run on such data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emdm_train.chat import render_conversation, tokenize_chat
from emdm_train.errors import DataError
from emdm_train.masking import maskable_positions

TEMPLATE = ("{% for m in messages %}[CLS] {{ m.role }} : {{ m.content }} [SEP] {% endfor %}"
            "{% if add_generation_prompt %}[CLS] assistant : {% endif %}")
CONVERSATION = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the cat sleeps"},
                {"role": "assistant", "content": "on the mat"}, {"role": "user", "content": "the dog"},
                {"role": "assistant", "content": "runs in the park"}]


@pytest.fixture
def tok(bert_checkpoint):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bert_checkpoint)
    tokenizer.chat_template = TEMPLATE
    return tokenizer


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_only_the_assistant_turns_are_trainable(tok):
    ids, trainable = render_conversation(tok, CONVERSATION)
    # by hand: the rendered text, and where each assistant turn starts and ends in it
    turns = ["[CLS] system : be brief [SEP] ", "[CLS] user : the cat sleeps [SEP] ", "[CLS] assistant : ",
             "on the mat [SEP] ", "[CLS] user : the dog [SEP] ", "[CLS] assistant : ", "runs in the park [SEP] "]
    assert ids == _ids(tok, "".join(turns))
    expected = []
    for i, part in enumerate(turns):
        expected += [i in (3, 6)] * len(_ids(tok, part))
    assert trainable == expected
    assert [t for t, f in zip(tok.convert_ids_to_tokens(ids), trainable) if f] == \
        ["on", "the", "mat", "[SEP]", "runs", "in", "the", "park", "[SEP]"]  # end-of-turn included


def test_batches_mask_exactly_the_trainable_tokens_and_eos_padding_is_trained(tok):
    import datasets

    ds = datasets.Dataset.from_list([{"messages": CONVERSATION}, {"messages": CONVERSATION[1:3]}])
    data, stats = tokenize_chat(ds, tok, "messages", 64, tok.eos_token_id, pad_with_eos=False)
    assert stats["rows"] == 2 and stats["trainable_tokens"] == 9 + 4
    ids, attn, plen = data.collate([0, 1], tok.pad_token_id)
    special = torch.zeros(len(tok), dtype=torch.bool)
    special[[tok.cls_token_id, tok.sep_token_id, tok.pad_token_id]] = True
    got = maskable_positions(ids, attn, special, plen, data.collate_trainable([0, 1], ids.shape[1]))
    for r in range(2):
        want = render_conversation(tok, ds[r]["messages"])[1]
        assert got[r, : len(want)].tolist() == want and not got[r, len(want):].any()
    assert data.maskable_counts(special.numpy()).tolist() == [9, 4]

    padded, _ = tokenize_chat(ds, tok, "messages", 64, tok.eos_token_id, pad_with_eos=True)
    assert padded.lengths.tolist() == [64, 64]
    row = padded.row(1)
    n = len(render_conversation(tok, ds[1]["messages"])[0])
    assert (row[n:] == tok.eos_token_id).all()
    assert padded.trainable[padded.offsets[1] + n: padded.offsets[2]].all()  # the EOS padding is trained


def test_bad_chat_rows_are_one_line_errors(tok):
    with pytest.raises(DataError, match="no assistant turn"):
        render_conversation(tok, [{"role": "user", "content": "hi"}])
    with pytest.raises(DataError, match="every message needs a role"):
        render_conversation(tok, [{"role": "robot", "content": "hi"}])
    tok.chat_template = "{% for m in messages %}{{ m.content | reverse }} {% endfor %}" \
                        "{% if add_generation_prompt %}go {% endif %}"
    with pytest.raises(DataError, match="not render a conversation as a prefix"):
        render_conversation(tok, CONVERSATION[1:3])


def test_training_on_chat_rows_through_the_cli(bert_checkpoint, tmp_path):
    from emdm_train.__main__ import main

    rows = [{"messages": CONVERSATION}, {"messages": CONVERSATION[1:3]}] * 12
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    template = tmp_path / "template.jinja"
    template.write_text(TEMPLATE)
    out = tmp_path / "run"
    assert main(["--model", bert_checkpoint, "--data", str(data), "--chat-template", str(template), "--output",
                 str(out), "--max-steps", "4", "--batch-size", "4", "--max-length", "64", "--eval-every", "0",
                 "--save-every", "0", "--log-every", "2", "--no-progress", "--report-to", "none",
                 "--pad-with-eos"]) == 0
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r.get("loss", r.get("eval_loss"))) for r in log)
    assert (out / "model.safetensors").is_file()
