"""SurpriseTable: counting matches a naive count, S = -log2 p with add-one smoothing, save/load round trip."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch

from emdm_core.errors import EMDMError
from emdm_core.surprise import FILENAME, SurpriseTable, special_token_ids


def _naive_surprise(counts: Counter, vocab: int, specials: set[int]) -> list[float]:
    ordinary = [i for i in range(vocab) if i not in specials]
    total = sum(counts[i] for i in ordinary)
    out = []
    for i in range(vocab):
        out.append(0.0 if i in specials else -math.log2((counts[i] + 1) / (total + len(ordinary))))
    return out


def test_counts_match_naive_count_for_every_batch_type():
    rng = np.random.default_rng(0)
    vocab, specials = 40, {0, 1, 2}
    rows = [rng.integers(0, vocab, size=rng.integers(1, 30)).tolist() for _ in range(200)]
    naive = Counter(t for r in rows for t in r)
    batches = [rows[:50],  # list of lists
               torch.tensor([t for r in rows[50:100] for t in r]),  # flat tensor
               np.array([t for r in rows[100:150] for t in r], dtype=np.int32),  # flat array
               [t for r in rows[150:] for t in r]]  # flat list
    table = SurpriseTable.from_token_batches(batches, vocab, special_ids=specials, progress=False)
    assert table.counts.tolist() == [naive[i] for i in range(vocab)]
    assert table.surprise.dtype == torch.float32 and table.surprise.shape == (vocab,)
    assert torch.allclose(table.surprise, torch.tensor(_naive_surprise(naive, vocab, specials)), atol=1e-5)
    assert table.surprise[list(specials)].abs().sum() == 0
    assert table.total_tokens == sum(naive[i] for i in range(vocab) if i not in specials)
    # the smoothed distribution over ordinary ids sums to one
    assert abs(float(table.probabilities().sum()) - 1.0) < 1e-9


def test_padding_ids_are_skipped_and_out_of_range_ids_rejected():
    table = SurpriseTable.from_token_batches([torch.tensor([[3, 3, -100], [4, -100, -100]])], 8, progress=False)
    assert table.counts.tolist() == [0, 0, 0, 2, 1, 0, 0, 0]
    with pytest.raises(EMDMError, match="outside the vocabulary"):
        SurpriseTable.from_token_batches([[1, 9]], 8, progress=False)


def test_rare_tokens_have_more_surprise():
    table = SurpriseTable.from_token_batches([[5] * 100 + [6] * 10 + [7]], 10, special_ids=[0], progress=False)
    s = table.surprise
    assert s[7] > s[6] > s[5] > 0
    assert s[9] > s[7]  # never seen: count 0 + 1
    assert s[0] == 0


def test_save_load_round_trip(tmp_path):
    table = SurpriseTable.from_token_batches([[1, 2, 2, 3, 3, 3]], 6, special_ids=[0, 5], progress=False,
                                             metadata={"source": "unit"})
    path = table.save(tmp_path)
    assert path == tmp_path / FILENAME and path.is_file()
    loaded = SurpriseTable.load(tmp_path)
    assert torch.equal(loaded.counts, table.counts)
    assert torch.equal(loaded.surprise, table.surprise)
    assert loaded.special_ids == [0, 5] and loaded.metadata["source"] == "unit"
    assert SurpriseTable.load(tmp_path / FILENAME) is not None  # the file itself works too
    assert SurpriseTable.load(tmp_path / "nothing-here") is None
    (tmp_path / "empty").mkdir()
    assert SurpriseTable.load(tmp_path / "empty") is None


def test_corrupt_file_is_a_one_line_error(tmp_path):
    (tmp_path / FILENAME).write_bytes(b"not a safetensors file")
    with pytest.raises(EMDMError, match="cannot read") as info:
        SurpriseTable.load(tmp_path)
    assert "\n" not in str(info.value)


def test_from_dataset_streams_local_files_and_matches_naive(tmp_path):
    from emdm_models.tiny import DEMO_CORPUS, train_tokenizer

    tok = train_tokenizer()
    texts = DEMO_CORPUS * 3
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"body": t}) for t in texts))
    (tmp_path / "c.txt").write_text("\n".join(texts))
    naive = Counter(t for text in texts for t in tok(text, add_special_tokens=False)["input_ids"])
    specials = set(special_token_ids(tok))
    for source, column in ((tmp_path / "c.jsonl", "body"), (tmp_path / "c.txt", "text")):
        table = SurpriseTable.from_dataset(str(source), tok, text_column=column, batch_size=7, progress=False)
        assert table.counts.tolist() == [naive[i] for i in range(len(tok))]
        assert torch.allclose(table.surprise, torch.tensor(_naive_surprise(naive, len(tok), specials)), atol=1e-5)
    with pytest.raises(EMDMError, match="column 'nope' not in dataset"):
        SurpriseTable.from_dataset(str(tmp_path / "c.jsonl"), tok, text_column="nope", progress=False)
    with pytest.raises(EMDMError, match="cannot load dataset"):
        SurpriseTable.from_dataset(str(tmp_path / "missing.jsonl"), tok, progress=False)
