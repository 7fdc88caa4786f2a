"""End to end on 4x4 Sudoku: generate, train with the real CLI, decode held-out puzzles, `margin` beats `vanilla`
(the structured model, and the unstructured stock BERT of the paper's setting with fresh batch augmentation).

Kim et al. 2025's claim in miniature: an MDM that has learned the rules only partly solves far more puzzles when
it reveals the cells it is sure of first (`margin`) than in random order (`vanilla`, the MDM reverse process),
at the same one cell per forward pass. The test puzzles are minimal (4-6 clues) and their solution grids never
appear in training (a quarter of the 288 grids is held out), so the model must apply the rules, not recall grids.
About 30-60 s on one CPU thread (training is most of it); `-s` prints the numbers.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore", "EMDM_NO_RELAUNCH": "1"}
N_TRAIN, N_TEST, TRAIN_STEPS = 3000, 300, 150
UNITS4 = ([[r * 4 + c for c in range(4)] for r in range(4)] + [[r * 4 + c for r in range(4)] for c in range(4)]
          + [[(b // 2 * 2 + i // 2) * 4 + b % 2 * 2 + i % 2 for i in range(4)] for b in range(4)])


def solves(puzzle: str, answer: str) -> bool:
    """A valid 4x4 grid (digits 1-4, each unit holds each once) that keeps every clue of the puzzle."""
    return (len(answer) == 16 and set(answer) <= set("1234") and all(p in ("0", a) for p, a in zip(puzzle, answer))
            and all(len({answer[i] for i in unit}) == 4 for unit in UNITS4))


def two_proportion_z(hits_a: int, hits_b: int, n: int) -> float:
    """z statistic of the difference of two solve rates over n puzzles each (pooled standard error)."""
    pool = (hits_a + hits_b) / (2 * n)
    return (hits_a - hits_b) / n / math.sqrt(max(pool * (1 - pool) * 2 / n, 1e-12))


def split_puzzles(seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, test) 4x4 puzzles with disjoint solution grids (every 4th grid in sorted order is a test grid)."""
    from studies.sudoku import generate as S

    pool = list(S.generate(2 * N_TRAIN, seed=seed, difficulties="easy,hard", size=4, chunk=2 * N_TRAIN))
    grids = sorted({r["solution"] for r in pool})
    test_grids = set(grids[::4])
    train = [r for r in pool if r["solution"] not in test_grids][:N_TRAIN]
    test = [r for r in pool if r["solution"] in test_grids][:N_TEST]
    return train, test


def test_puzzle_split_keeps_test_puzzles_and_grids_out_of_training():
    train, test = split_puzzles()
    assert len(train) == N_TRAIN and len(test) == N_TEST
    assert not {r["puzzle"] for r in train} & {r["puzzle"] for r in test}
    assert not {r["solution"] for r in train} & {r["solution"] for r in test}
    assert all(solves(r["puzzle"], r["solution"]) and 4 <= r["clues"] <= 7 for r in train + test)


@pytest.mark.slow
def test_margin_beats_vanilla_on_held_out_4x4_puzzles(tmp_path):
    import emdm_models.architectures as arch
    from emdm_sampling import generate, load_denoiser

    train, test = split_puzzles()
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in train))
    init = arch.save_sudoku_model_dir(tmp_path / "init", "cpu", seed=0, grid_size=4, hidden_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                                      peer_attention=True)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "emdm_train", "--model", str(init), "--from-scratch", "--data", str(data),
         "--output", str(tmp_path / "model"), "--data-format", "prompt_response", "--masking", "uniform",
         "--max-length", "34", "--batch-size", "64", "--learning-rate", "3e-3", "--warmup-steps", "20",
         "--weight-decay", "0", "--max-steps", str(TRAIN_STEPS), "--val-split", "0", "--eval-every", "0",
         "--save-every", "0", "--log-every", "50", "--seed", "0", "--cpu", "--report-to", "none", "--no-progress"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    train_s = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        den = load_denoiser(tmp_path / "model")
        prompts = [den.tokenizer(r["puzzle"])["input_ids"] for r in test]
        hits = {}
        for sampler in ("vanilla", "margin"):
            out = generate(den, prompts, sampler=sampler, steps=16, gen_length=16, seeds=list(range(len(test))))
            hits[sampler] = sum(solves(r["puzzle"], den.tokenizer.decode(g)) for r, g in zip(test, out.generated))
    finally:
        torch.set_num_threads(before)
    z = two_proportion_z(hits["margin"], hits["vanilla"], len(test))
    print(f"\n4x4 e2e: trained {TRAIN_STEPS} steps in {train_s:.1f}s; solved {hits['margin']}/{len(test)} with margin, "
          f"{hits['vanilla']}/{len(test)} with vanilla; z = {z:.1f}")
    assert hits["margin"] > hits["vanilla"] and z > 3, (hits, z)


def train_unstructured_bert(folder: Path, train: list[dict], *objective: str) -> Path:
    """The paper's setting in miniature, trained with the real CLI into folder/model: a stock 2-layer BERT from
    scratch, 450 steps, a fresh symmetry of every puzzle in every batch; `objective`: e.g. --masking uniform."""
    from emdm_models.architectures.sudoku import save_sudoku_encoder_dir

    data = folder / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in train))
    init = save_sudoku_encoder_dir(folder / "init", "bert", "cpu", grid_size=4, hidden_size=128,
                                   intermediate_size=512, num_hidden_layers=2, num_attention_heads=4)
    proc = subprocess.run(
        [sys.executable, "-m", "emdm_train", "--model", str(init), "--from-scratch", "--data", str(data),
         "--output", str(folder / "model"), "--data-format", "prompt_response", *objective,
         "--max-length", "34", "--batch-size", "64", "--learning-rate", "1e-3", "--warmup-steps", "20",
         "--weight-decay", "0", "--max-steps", "450", "--val-split", "0", "--eval-every", "0", "--save-every", "0",
         "--log-every", "50", "--seed", "0", "--cpu", "--report-to", "none", "--no-progress",
         "--augment", "studies.sudoku.augment:symmetries"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder / "model"


@pytest.mark.slow
def test_unstructured_bert_recipe_margin_beats_vanilla_paired(tmp_path):
    """The paper's setting in miniature: a stock BertForMaskedLM (learned absolute positions, full vocabulary,
    clues predicted like any cell), puzzle [SEP] solution [EOS], a fresh random symmetry of every puzzle in every
    batch (`--augment`). Paired on the same held-out puzzles, margin solves more than vanilla (exact McNemar)."""
    from emdm_core.stats import paired_counts
    from emdm_sampling import generate, load_denoiser

    train, test = split_puzzles()
    train_unstructured_bert(tmp_path, train, "--masking", "uniform")

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        den = load_denoiser(tmp_path / "model")
        assert type(den.model).__name__ == "BertForMaskedLM" and den.vocab_size == 15
        prompts = [den.tokenizer(r["puzzle"])["input_ids"] for r in test]
        outcomes = {}
        for sampler in ("vanilla", "margin"):
            out = generate(den, prompts, sampler=sampler, steps=16, gen_length=16, seeds=list(range(len(test))))
            outcomes[sampler] = [int(solves(r["puzzle"], den.tokenizer.decode(g))) for r, g in
                                 zip(test, out.generated)]
    finally:
        torch.set_num_threads(before)
    counts = paired_counts(outcomes["margin"], outcomes["vanilla"])
    print(f"\n4x4 unstructured BERT: margin {sum(outcomes['margin'])}/{len(test)}, vanilla "
          f"{sum(outcomes['vanilla'])}/{len(test)}; {counts}, McNemar p = {counts.p_value:.2g}")
    assert counts.only_a > counts.only_b and counts.p_value < 1e-3, counts
