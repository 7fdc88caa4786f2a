"""Surprise masking at a scale that can answer the question (issue 15, seed 000): branch from a model that already
uses context.

Stage 1 trains one model with uniform (MDLM) masking from scratch on the whole offline corpus. A **gate** checks
that it uses context: its held-out (validation) NELBO must be at most `gate_ratio` (0.90) times the unigram model's.
If it is not, the study stops there and the report says "scale insufficient", with the budget the learning curve
implies. Stage 2 continues the stage-1 checkpoint for the same number of steps, with the same data order (the seed
fixes it, for every cell alike), under uniform masking (the control) and under surprise masking softmax(S/T) at
T = 4 and 8, high-surprise tokens masked first (the seed's formula) and low-surprise first (its stated aim: keep
the informative tokens visible), several seeds each. The spread between uniform seeds is the noise floor.

Every model is measured by `metrics.py` (M1 uniform-masking NELBO, M2 the prior-corrected NELBO, M3 cross-entropy
and context gain per surprise quintile at fixed mask rates) and judged by `DECISION_RULE`, fixed before the runs.

    python -m studies.surprise_masking.staged --out runs/sm15 --preset cpu \\
        --results-dir docs/experiments/results/staged

Model size, steps, batch, seeds, temperatures and sizes are flags (`--help`), so the same command reruns the
study at any scale; `--init-from DIR` branches stage 2 from an existing checkpoint trained with the same tokenizer.
Resumable: a run whose `metrics.json` exists is skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emdm_core import typed
from emdm_core.typed import at_least, greater_than, in_range, option
from emdm_train.errors import DataError, TrainError

from . import metrics as M
from .corpora import read_split, write_splits, prepare_corpus
from .experiment import _write_json, full_blocks, mean_ci, setup_progress_log

logger = logging.getLogger("studies.surprise_masking.staged")
STEM = "staged-surprise"
N_BUCKETS = 5

DECISION_RULE = (
    "The hypothesis is supported only if some surprise cell beats uniform on both (a) M2, the prior-corrected "
    "test NELBO, and (b) M3, the raw cross-entropy on the highest-surprise fifth of masked test tokens at both "
    "fixed mask rates (0.15 and 0.5): each seed-paired difference (cell minus uniform, same seed = same data "
    "order and evaluation masks) must have a 95% t-interval over seeds lying entirely below zero. Every surprise "
    "cell is tested without a multiplicity correction (which only makes 'supported' easier). If the stage-1 "
    "gate fails, the answer is 'not testable at this scale'; if it passes and no cell meets the rule, 'no'.")


# --- configuration ---------------------------------------------------------------------------------------------


def _sizes_check(v: tuple[str, ...]) -> str | None:
    for s in v:
        h, sep, layers = s.partition("x")
        if not (sep and h.isdigit() and layers.isdigit() and int(h) >= 16 and int(layers) >= 1 and int(h) % 16 == 0):
            return f"entries must look like 256x4, hidden size (a multiple of 16) x layers (got {s!r})"
    return None if v else "needs at least one size, e.g. 256x4"


@dataclass
class StudyConfig:
    """Every setting of the study; the CLI flags are derived from these fields."""

    corpus: str = option("shakespeare+gutenberg", "corpus: shakespeare+gutenberg, shakespeare, gutenberg, a folder of "
                         ".txt documents, or a folder with train/validation/test.jsonl", group="data")
    split_seed: int = option(0, "seed of the by-document split", group="data")
    val_fraction: float = option(0.05, "share of the characters held out for validation (gate, M2 fit)",
                                 group="data", check=in_range(0, 1, True, True))
    test_fraction: float = option(0.1, "share of the characters held out for test (M1-M3)", group="data",
                                  check=in_range(0, 1, True, True))
    vocab_size: int = option(4096, "byte-level BPE vocabulary, trained on the training split", group="data",
                             check=at_least(260))
    max_length: int = option(128, "tokens per packed sequence", group="data", check=at_least(16))
    sizes: tuple[str, ...] = option(("128x4", "64x4"), "model sizes HIDDENxLAYERS (comma-separated; two sizes give the "
                                    "'fewer parameters' contrast): emdm's bidirectional Llama (RoPE, SwiGLU)",
                                    group="model", check=_sizes_check)
    batch_size: int = option(32, "sequences per optimizer step (both stages)", group="training", check=at_least(1))
    stage1_steps: int = option(3000, "stage-1 (uniform, from scratch) optimizer steps", group="training",
                               check=at_least(1))
    stage1_minutes: float | None = option(25.0, "stage-1 wall-clock budget in minutes (stops early; none: no limit)",
                                          group="training", check=greater_than(0))
    stage1_lr: float = option(3e-3, "stage-1 peak learning rate", group="training", check=greater_than(0))
    stage2_steps: int = option(300, "stage-2 steps per branch (equal for every cell)", group="training",
                               check=at_least(1))
    train_eps: float = option(0.02, "smallest noise level t of training (both stages, every cell); the evaluation "
                              "always integrates t over [0.001, 1]", group="training", check=in_range(0, 0.5, True))
    stage2_lr: float = option(1e-3, "stage-2 peak learning rate", group="training", check=greater_than(0))
    init_from: str | None = option(None, "branch stage 2 from this checkpoint instead of training stage 1 (it must "
                                   "use the study's tokenizer: OUT/tokenizer)", group="training")
    temperatures: tuple[float, ...] = option((4.0, 8.0), "surprise temperatures T of softmax(S/T)", group="grid",
                                             check=lambda v: None if v and all(t > 0 for t in v) else
                                             "must be > 0, e.g. 4,8")
    directions: tuple[str, ...] = option(("high", "low"), "which tokens are masked first: high (the seed's "
                                         "formula) and/or low (its stated aim)", group="grid",
                                         check=lambda v: None if v and set(v) <= {"high", "low"} else
                                         "must be high and/or low")
    seeds: tuple[int, ...] = option((0, 1, 2), "stage-2 seeds (data order, masking noise); shared by every cell",
                                    group="grid", check=lambda v: None if v else "needs at least one seed")
    gate_ratio: float = option(0.90, "gate: stage-1 validation NELBO must be <= this x the unigram model's",
                               group="evaluation", check=in_range(0, 1, True, False))
    eval_blocks: int = option(256, "test blocks of max_length tokens (evenly spaced) for M1-M3", group="evaluation",
                              check=at_least(2))
    fit_blocks: int = option(128, "validation blocks for the gate and the M2 prior fit", group="evaluation",
                             check=at_least(2))
    eval_draws: int = option(2, "uniform-masking noise draws per block", group="evaluation", check=at_least(1))
    noise_bins: int = option(8, "noise-level bins, one prior-correction beta each (M2)", group="evaluation",
                             check=at_least(1))
    fixed_rates: tuple[float, ...] = option((0.15, 0.5), "fixed mask rates of M3", group="evaluation",
                                            check=lambda v: None if v and all(0 < r < 1 for r in v) else
                                            "must be in (0, 1)")
    eval_seed: int = option(1234, "seed of every evaluation mask (the same for all models)", group="evaluation")
    workers: int = option(2, "stage-2 runs in parallel (one process each)", group="machine", check=at_least(1))
    threads: int = option(1, "torch threads per stage-2 process (stage 1 uses workers x threads)", group="machine",
                          check=at_least(1))
    device: str = option("cpu", "cpu or cuda", group="machine")

    def cells(self) -> list[dict[str, Any]]:
        """uniform first, then surprise at every (direction, T)."""
        out = [{"cell": "uniform", "masking": "uniform", "direction": None, "temperature": None}]
        for d in self.directions:
            for t in self.temperatures:
                out.append({"cell": f"surprise_{d}_T{t:g}", "masking": "surprise", "direction": d,
                            "temperature": t})
        return out

    def protocol(self) -> M.NoiseProtocol:
        """The evaluation noise protocol."""
        return M.NoiseProtocol(draws=self.eval_draws, bins=self.noise_bins, rates=self.fixed_rates,
                               seed=self.eval_seed)

    def setup_key(self) -> dict[str, Any]:
        """Settings that must not change inside one --out (corpus, tokenizer, blocks)."""
        return {k: getattr(self, k) for k in ("corpus", "split_seed", "val_fraction", "test_fraction", "vocab_size",
                                              "max_length", "eval_blocks", "fit_blocks")}


PRESETS: dict[str, dict[str, Any]] = {
    # the smallest end-to-end configuration (the test suite): both stages, the gate, M1-M3, in well under 2 min
    "tiny": dict(vocab_size=300, max_length=32, sizes=("32x1",), batch_size=8, stage1_steps=700, stage1_minutes=None,
                 stage2_steps=4, temperatures=(4.0,), directions=("high",), seeds=(0, 1), eval_blocks=12,
                 fit_blocks=8, eval_draws=1, noise_bins=2, gate_ratio=1.0, workers=1, threads=1),
    # the committed report: 2-core CPU; per size stage 1 at most 25 min, then 15 branches two at a time (128x4:
    # ~40 min, 64x4: ~25 min)
    "cpu": dict(),
    # one GPU (benchmarks/gpu/surprise_staged.sh, not yet run): two larger sizes, longer stages, bf16 (emdm_train's
    # mixed_precision=auto), three branch processes sharing the GPU (these models leave most of an H200 idle)
    "gpu": dict(sizes=("512x8", "256x4"), max_length=256, batch_size=64, stage1_steps=4000, stage1_minutes=1.5,
                stage2_steps=300, eval_blocks=1024, fit_blocks=256, workers=3, threads=4, device="cuda"),
}


def build_config(preset: str, overrides: dict[str, Any]) -> StudyConfig:
    """The preset with command-line overrides, type-coerced and range-checked (one-line errors)."""
    if preset not in PRESETS:
        raise TrainError(f"unknown --preset {preset!r}; choose one of {', '.join(PRESETS)}")
    cfg = typed.build(StudyConfig, {**PRESETS[preset], **overrides}, origin="the study options", error=TrainError)
    typed.check_fields(cfg, TrainError, label=typed.flag_name)
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError("--device cuda but no CUDA device is visible; use --device cpu")
    return cfg


def parse_size(size: str) -> tuple[int, int]:
    h, _, layers = size.partition("x")
    return int(h), int(layers)


def size_tag(size: str) -> str:
    h, layers = parse_size(size)
    return f"h{h}-l{layers}"


# --- setup: corpus, tokenizer, surprise, blocks ----------------------------------------------------------------


@dataclass
class Setup:
    """What every run shares: folders, the surprise table (training split), validation and test blocks."""

    out: Path
    corpus_dir: Path
    tokenizer_dir: Path
    val: M.EvalData
    test: M.EvalData
    info: dict[str, Any]


def _blocks(docs: list[Any], tokenizer: Any, length: int, count: int | None) -> tuple[torch.Tensor, int, int]:
    """Full packed blocks of a held-out split (at least two: the paired block-level statistics need them)."""
    return full_blocks(docs, tokenizer, length, count, 2,
                       f"a held-out split has fewer than {2 * length} tokens; add documents or lower --max-length")


def prepare_setup(cfg: StudyConfig, out: Path) -> Setup:
    """Splits (disjoint by document), tokenizer and surprise table from the training split, held-out blocks."""
    import datasets
    from transformers import AutoTokenizer

    from emdm_core.surprise import SurpriseTable, special_token_ids
    from emdm_models.tokenizers import train_tokenizer
    from emdm_train.corpus import tokenize_text

    out.mkdir(parents=True, exist_ok=True)
    key = json.loads(json.dumps(cfg.setup_key()))
    setup_file = out / "setup.json"
    if setup_file.is_file():
        old = json.loads(setup_file.read_text()).get("setup_key", {})
        changed = [k for k in key if k in old and old[k] != key[k]]
        if changed:
            raise TrainError(f"--out {out} was made with other settings ({', '.join(changed)}); use a new --out")
    corpus_dir, tok_dir = out / "corpus", out / "tokenizer"
    src = Path(os.path.expanduser(cfg.corpus))
    if src.is_dir() and all((src / f"{s}.jsonl").is_file() for s in ("train", "validation", "test")):
        if not corpus_dir.exists():
            shutil.copytree(src, corpus_dir)
    elif not (corpus_dir / "corpus.json").is_file():
        write_splits(prepare_corpus(cfg.corpus, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                                    seed=cfg.split_seed), corpus_dir)
    docs = {s: read_split(corpus_dir, s) for s in ("train", "validation", "test")}
    ids = {s: {d.doc_id for d in v} for s, v in docs.items()}
    texts = {s: {d.text for d in v} for s, v in docs.items()}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        if ids[a] & ids[b] or texts[a] & texts[b]:
            raise DataError(f"the {a} and {b} splits share a document; rebuild {corpus_dir}")
    if not (tok_dir / "tokenizer.json").is_file():
        train_tokenizer([d.text for d in docs["train"]], vocab_size=cfg.vocab_size, kind="bpe").save_pretrained(
            tok_dir)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    vocab = len(tokenizer)
    specials = special_token_ids(tokenizer)
    train_ds = datasets.Dataset.from_list([{"text": d.text} for d in docs["train"]])
    train_tokens, _ = tokenize_text(train_ds, tokenizer, "text", cfg.max_length, pack=True, add_eos=True)
    table = SurpriseTable.from_token_batches([train_tokens.tokens], vocab, specials, progress=False,
                                             metadata={"source": "training split"})
    special = torch.zeros(vocab, dtype=torch.bool)
    special[torch.tensor(specials)] = True
    # quintile edges from the training tokens' surprise (nothing about the evaluation comes from held-out text)
    train_ids = torch.as_tensor(np.asarray(train_tokens.tokens), dtype=torch.long)
    train_s = table.surprise[train_ids[~special[train_ids]]].double()
    sample = train_s[torch.linspace(0, train_s.numel() - 1, min(train_s.numel(), 2_000_000)).long()]
    edges = [float(torch.quantile(sample, q / N_BUCKETS)) for q in range(1, N_BUCKETS)]
    bucket_of_id = torch.bucketize(table.surprise.double(), torch.tensor(edges, dtype=torch.float64), right=True)
    bucket_of_id[special] = -1
    unmaskable = special.clone()
    if tokenizer.eos_token_id is not None:
        unmaskable[tokenizer.eos_token_id] = False  # EOS is predicted (counted in the NELBO), not scored by quintile
    val_blocks, val_tokens, val_chars = _blocks(docs["validation"], tokenizer, cfg.max_length, cfg.fit_blocks)
    test_blocks, test_tokens, test_chars = _blocks(docs["test"], tokenizer, cfg.max_length, cfg.eval_blocks)
    val = M.EvalData(val_blocks, table.surprise, bucket_of_id, unmaskable)
    test = M.EvalData(test_blocks, table.surprise, bucket_of_id, unmaskable)

    def unigram_bits(blocks: torch.Tensor) -> float:
        flat = blocks.flatten()
        return float(table.surprise[flat[bucket_of_id[flat] >= 0]].double().mean())

    test_flat = test_blocks.flatten()
    info = {"corpus": json.loads((corpus_dir / "corpus.json").read_text()) if (corpus_dir / "corpus.json").is_file()
            else {"corpus": cfg.corpus},
            "tokenizer": {"type": "byte-level BPE", "vocab_size": vocab},
            "train_tokens": int(len(train_tokens.tokens)), "unigram_entropy_bits": table.entropy(),
            "validation": {"tokens": val_tokens, "chars": val_chars, "blocks": int(val_blocks.shape[0]),
                           "unigram_bits_per_token": unigram_bits(val_blocks)},
            "test": {"tokens": test_tokens, "chars": test_chars, "tokens_per_char": test_tokens / max(test_chars, 1),
                     "blocks": int(test_blocks.shape[0]), "unigram_bits_per_token": unigram_bits(test_blocks),
                     "unigram_bits_by_quintile": [float(table.surprise[test_flat[bucket_of_id[test_flat] == b]]
                                                        .double().mean()) for b in range(N_BUCKETS)],
                     "quintile_shares": [float((bucket_of_id[test_flat] == b).sum() / (bucket_of_id[test_flat] >= 0)
                                               .sum()) for b in range(N_BUCKETS)]},
            "quintile_edges_bits": edges,
            "split_documents": {s: sorted(ids[s]) for s in ids}}
    _write_json(setup_file, {"setup_key": key, **info})
    return Setup(out, corpus_dir, tok_dir, val, test, info)


def model_config_dir(cfg: StudyConfig, s: Setup, size: str) -> Path:
    """A config-only folder of emdm's bidirectional Llama at `size` (random init when trained from it)."""
    from transformers import AutoTokenizer

    from emdm_models.backbones import DiffusionLlamaConfig

    folder = s.out / size_tag(size) / "model-config"
    if not (folder / "config.json").is_file():
        tok = AutoTokenizer.from_pretrained(s.tokenizer_dir)
        hidden, layers = parse_size(size)
        heads = max(2, hidden // 64)
        DiffusionLlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=4 * hidden,
                             num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                             max_position_embeddings=cfg.max_length, rms_norm_eps=1e-5, initializer_range=0.02,
                             tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                             mask_token_id=tok.mask_token_id,
                             rope_parameters={"rope_type": "default", "rope_theta": 10000.0}).save_pretrained(folder)
    return folder


# --- training ---------------------------------------------------------------------------------------------------


def _train(cfg: StudyConfig, s: Setup, model: Path, output: Path, *, masking: str, seed: int, steps: int, lr: float,
           minutes: float | None, from_scratch: bool, cell: dict[str, Any] | None = None,
           eval_every: int = 0) -> dict[str, Any]:
    """One emdm_train run (output captured in train.out); the final model at `output`, optimizer states removed."""
    from emdm_train import TrainConfig, train

    done = output / "train_done.json"
    if done.is_file() and (output / "config.json").is_file():
        return json.loads(done.read_text())
    output.mkdir(parents=True, exist_ok=True)
    cell = cell or {}
    tc = TrainConfig(model=str(model), tokenizer=str(s.tokenizer_dir), data=str(s.corpus_dir),
                     val_data=str(s.corpus_dir), output=str(output), overwrite=True, max_length=cfg.max_length,
                     batch_size=cfg.batch_size, max_steps=steps, max_minutes=minutes, learning_rate=lr,
                     warmup_steps=max(1, steps // 20), adam_beta2=0.98, masking=masking, seed=seed, eps=cfg.train_eps,
                     from_scratch=from_scratch, surprise_temperature=cell.get("temperature") or 1.0,
                     surprise_mask_first=cell.get("direction") or "high", surprise_table="data",
                     eval_every=eval_every, save_every=0, save_total_limit=1, max_eval_examples=64,
                     log_every=max(1, steps // 20), cpu=cfg.device == "cpu", progress=False, report_to="none")
    t0 = time.perf_counter()
    with open(output / "train.out", "w", buffering=1) as log, contextlib.redirect_stdout(log):
        result = train(tc)
    for ckpt in output.glob("checkpoint-*"):
        shutil.rmtree(ckpt, ignore_errors=True)
    evals = [{"step": r["step"], "eval_loss_nats": r["eval_loss"]} for r in result.history
             if r.get("eval_loss") is not None]
    info = {"train_time_s": time.perf_counter() - t0, "steps": result.step,
            "tokens_seen": result.step * cfg.batch_size * cfg.max_length, "eval_history": evals}
    _write_json(done, info)
    return info


def stage1(cfg: StudyConfig, s: Setup, size: str) -> Path:
    """The shared uniform-masking checkpoint (or --init-from); returns its folder."""
    if cfg.init_from:
        path = Path(os.path.expanduser(cfg.init_from))
        if not (path / "config.json").is_file():
            raise TrainError(f"--init-from {cfg.init_from}: no config.json there; give a checkpoint folder")
        _check_same_tokenizer(path, s.tokenizer_dir)
        return path
    folder = s.out / size_tag(size) / "stage1"
    if not (folder / "train_done.json").is_file():
        logger.info("stage 1 (%s): %d steps of uniform masking from scratch%s", size, cfg.stage1_steps,
                    f", at most {cfg.stage1_minutes:g} min" if cfg.stage1_minutes else "")
        torch.set_num_threads(cfg.workers * cfg.threads)
        try:
            info = _train(cfg, s, model_config_dir(cfg, s, size), folder, masking="uniform", seed=cfg.split_seed,
                          steps=cfg.stage1_steps, lr=cfg.stage1_lr, minutes=cfg.stage1_minutes, from_scratch=True,
                          eval_every=max(1, cfg.stage1_steps // 12))
        finally:
            torch.set_num_threads(cfg.threads)
        logger.info("stage 1 (%s): %d steps in %.0f s", size, info["steps"], info["train_time_s"])
    return folder


def _check_same_tokenizer(checkpoint: Path, tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    try:
        theirs = AutoTokenizer.from_pretrained(checkpoint).get_vocab()
    except Exception:  # noqa: BLE001 - a checkpoint without tokenizer files
        raise TrainError(f"--init-from {checkpoint} has no tokenizer; copy {tokenizer_dir} into it") from None
    if theirs != AutoTokenizer.from_pretrained(tokenizer_dir).get_vocab():
        raise TrainError(f"--init-from {checkpoint} uses another tokenizer than {tokenizer_dir}; train it with the "
                         f"study's tokenizer (or start a new --out from its corpus)")


def evaluate_model(cfg: StudyConfig, s: Setup, model_dir: Path) -> dict[str, Any]:
    """Fit the prior correction on validation blocks, then M1-M3 on the test blocks, and M1 on validation."""
    from emdm_sampling import load_denoiser

    den = load_denoiser(model_dir, device=cfg.device)
    proto = cfg.protocol()
    betas = M.fit_prior_correction(den, s.val, proto)
    measured = M.measure(den, s.test, betas, proto)
    val_m1 = M.measure(den, s.val, [0.0] * proto.bins, dataclasses.replace(proto, rates=()))["m1_bpt"]
    np.savez_compressed(model_dir / "blocks.npz", **M.blocks(measured))
    tpc = s.info["test"]["tokens_per_char"]
    out = M.scalars(measured)
    out.update(m1_bpc=out["m1_bpt"] * tpc, m2_bpc=out["m2_bpt"] * tpc, val_m1_bpt=val_m1,
               val_ratio_to_unigram=val_m1 / s.info["validation"]["unigram_bits_per_token"])
    return out


def gate(cfg: StudyConfig, s: Setup, size: str, folder: Path) -> dict[str, Any]:
    """Measure the stage-1 model (cached); the gate passes when its validation NELBO <= gate_ratio x the unigram
    model's."""
    path = s.out / size_tag(size) / "stage1_metrics.json"
    if path.is_file():
        row = json.loads(path.read_text())
    else:
        t0 = time.perf_counter()
        if not folder.resolve().is_relative_to(s.out.resolve()):  # --init-from: measure a copy, never write into it
            copy = s.out / size_tag(size) / "stage1-external"
            if not copy.exists():
                shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("checkpoint-*"))
            folder = copy
        row = evaluate_model(cfg, s, folder)
        done = folder / "train_done.json"
        row.update(json.loads(done.read_text()) if done.is_file() else {}, size=size,
                   eval_time_s=time.perf_counter() - t0)
        _write_json(path, row)
    row = with_corrected_gain(row)
    row["gate_ratio"] = cfg.gate_ratio
    row["gate_threshold_bpt"] = cfg.gate_ratio * s.info["validation"]["unigram_bits_per_token"]
    row["gate_passed"] = bool(row["val_ratio_to_unigram"] <= cfg.gate_ratio)
    row["budget_estimate"] = None if row["gate_passed"] else budget_estimate(
        row.get("eval_history", []), row["gate_threshold_bpt"], cfg)
    return row


def budget_estimate(history: list[dict[str, Any]], target_bits: float, cfg: StudyConfig) -> dict[str, Any]:
    """Extrapolate the held-out loss curve (bits vs log step, last half of the evaluations) to the gate."""
    pts = [(h["step"], h["eval_loss_nats"] / math.log(2)) for h in history if h["step"] > 0]
    pts = pts[len(pts) // 2:]
    if len(pts) < 2:
        return {"note": "too few evaluations to extrapolate; train longer (--stage1-steps)"}
    x = np.log([p[0] for p in pts])
    y = np.array([p[1] for p in pts])
    slope, intercept = np.polyfit(x, y, 1)
    if slope >= 0:
        return {"slope_bits_per_log_step": float(slope),
                "note": "the held-out loss no longer falls: a larger model (--sizes) is needed, not more steps"}
    steps = float(math.exp((target_bits - intercept) / slope))
    return {"slope_bits_per_log_step": float(slope), "steps_needed": steps,
            "tokens_needed": steps * cfg.batch_size * cfg.max_length,
            "note": "log-linear extrapolation of the trainer's held-out loss (64 validation rows): a rough guide"}


def run_dir(out: Path, size: str, cell: str, seed: int) -> Path:
    """Where one stage-2 branch lives."""
    return out / size_tag(size) / "stage2" / cell / f"seed{seed}"


def branch(cfg: StudyConfig, s: Setup, size: str, cell: dict[str, Any], seed: int, init: Path) -> dict[str, Any]:
    """Train one stage-2 branch from the stage-1 checkpoint and measure it; metrics.json marks it complete."""
    rdir = run_dir(s.out, size, cell["cell"], seed)
    if (rdir / "metrics.json").is_file():
        return json.loads((rdir / "metrics.json").read_text())
    t0 = time.perf_counter()
    info = _train(cfg, s, init, rdir, masking=cell["masking"], seed=seed, steps=cfg.stage2_steps, lr=cfg.stage2_lr,
                  minutes=None, from_scratch=False, cell=cell)
    t1 = time.perf_counter()
    row = {**cell, "size": size, "seed": seed, **{k: v for k, v in info.items() if k != "eval_history"},
           **evaluate_model(cfg, s, rdir)}
    row.update(eval_time_s=time.perf_counter() - t1, run_time_s=time.perf_counter() - t0)
    _write_json(rdir / "metrics.json", row)
    return row


# --- the whole study ---------------------------------------------------------------------------------------------


def run_study(cfg: StudyConfig, out: Path) -> Setup:
    """Setup, then per size: stage 1, the gate, the stage-2 branches (in parallel processes), and the report."""
    s = prepare_setup(cfg, out)
    logger.info("setup: %s training tokens, unigram %.3f bits/token on validation, %.3f on test; %d cells x %d "
                "seeds x %d sizes", f"{s.info['train_tokens']:,}", s.info["validation"]["unigram_bits_per_token"],
                s.info["test"]["unigram_bits_per_token"], len(cfg.cells()), len(cfg.seeds), len(cfg.sizes))
    gates, init = {}, {}
    for size in cfg.sizes:
        folder = init[size] = stage1(cfg, s, size)
        g = gate(cfg, s, size, folder)
        gates[size] = g
        logger.info("gate (%s): validation NELBO %.3f bits/token = %.3f x unigram (threshold %.2f): %s", size,
                    g["val_m1_bpt"], g["val_ratio_to_unigram"], cfg.gate_ratio,
                    "passed" if g["gate_passed"] else "FAILED (scale insufficient)")
    jobs = [(size, cell, seed) for size in cfg.sizes if gates[size]["gate_passed"] for seed in cfg.seeds
            for cell in cfg.cells() if not (run_dir(out, size, cell["cell"], seed) / "metrics.json").is_file()]
    if jobs:
        _run_jobs(cfg, s, out, jobs, init)
    return s


def _run_jobs(cfg: StudyConfig, s: Setup, out: Path, jobs: list[tuple[str, dict[str, Any], int]],
              init: dict[str, Path]) -> None:
    """Stage-2 branches from the stage-1 folders `init` (per size): in this process when workers == 1, else
    `workers` child processes at a time."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc="stage-2 branches", unit="run", disable=not sys.stderr.isatty())

    def done(size: str, cell: dict[str, Any], seed: int) -> None:
        row = json.loads((run_dir(out, size, cell["cell"], seed) / "metrics.json").read_text())
        logger.info("done %s %s seed %d: M1 %.4f M2 %.4f bits/token, train %.0f s, eval %.0f s", size,
                    cell["cell"], seed, row["m1_bpt"], row["m2_bpt"], row["train_time_s"], row["eval_time_s"])
        bar.update(1)

    if cfg.workers == 1:
        for size, cell, seed in jobs:
            branch(cfg, s, size, cell, seed, init[size])
            done(size, cell, seed)
        bar.close()
        return

    def child(job: tuple[str, dict[str, Any], int]) -> None:
        size, cell, seed = job
        rdir = run_dir(out, size, cell["cell"], seed)
        rdir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "studies.surprise_masking.staged", "--out", str(out), "--branch",
               f"{size}:{cell['cell']}:{seed}"]
        env = {**os.environ, "OMP_NUM_THREADS": str(cfg.threads), "TOKENIZERS_PARALLELISM": "false"}
        with open(rdir / "branch.log", "w") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=str(Path(__file__).resolve().parents[2])).returncode
        if rc != 0:
            tail = (rdir / "branch.log").read_text().strip().splitlines()[-1:] or ["(no output)"]
            raise TrainError(f"stage-2 run {size} {cell['cell']} seed {seed} failed: {tail[0]} (log: "
                             f"{rdir / 'branch.log'})")
        done(size, cell, seed)

    with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
        for future in [pool.submit(child, job) for job in jobs]:
            future.result()
    bar.close()


# --- statistics and report ------------------------------------------------------------------------------------


def primary_metrics(cfg: StudyConfig) -> list[str]:
    """The metrics of the decision rule and the tables."""
    tags = [f"r{int(round(r * 100)):02d}" for r in cfg.fixed_rates]
    return (["m1_bpt", "m1_bpc", "m2_bpt", "m2_bpc"] + [f"m3_{t}_ce_raw_q{N_BUCKETS}" for t in tags]
            + [f"m3_{t}_ce_corr_q{N_BUCKETS}" for t in tags]
            + [f"m3_{t}_{g}_q{q}" for g in ("gain", "gain_corr") for t in tags for q in range(1, N_BUCKETS + 1)])


def collect(cfg: StudyConfig, out: Path) -> list[dict[str, Any]]:
    """Every finished stage-2 run, in grid order."""
    rows = []
    for size in cfg.sizes:
        for seed in cfg.seeds:
            for cell in cfg.cells():
                f = run_dir(out, size, cell["cell"], seed) / "metrics.json"
                if f.is_file():
                    rows.append(with_corrected_gain(json.loads(f.read_text())))
    return rows


def with_corrected_gain(row: dict[str, Any]) -> dict[str, Any]:
    """Add the prior-corrected context gain per quintile: unigram CE minus the corrected CE (the raw gain also
    counts what a shifted prior earns on rare or frequent tokens)."""
    for key in [k for k in row if k.startswith("m3_") and "_unigram_q" in k]:
        tag, q = key.split("_")[1], key.rsplit("_q", 1)[1]
        row[f"m3_{tag}_gain_corr_q{q}"] = row[key] - row[f"m3_{tag}_ce_corr_q{q}"]
    return row


def paired(cfg: StudyConfig, s: Setup, rows: list[dict[str, Any]], size: str) -> dict[str, dict[str, Any]]:
    """Per cell and metric: mean and 95% t-interval over seeds, the seed-paired difference from uniform (t-interval
    over seeds), and the block-level paired difference pooled over seeds (t-interval over test blocks)."""
    by = {(r["cell"], r["seed"]): r for r in rows if r["size"] == size}
    out_cells: dict[str, dict[str, Any]] = {}
    block_cache: dict[tuple[str, int], dict[str, np.ndarray]] = {}

    def arrays(cell: str, seed: int) -> dict[str, np.ndarray] | None:
        if (cell, seed) not in block_cache:
            f = run_dir(s.out, size, cell, seed) / "blocks.npz"
            block_cache[(cell, seed)] = dict(np.load(f)) if f.is_file() else None  # type: ignore[assignment]
        return block_cache[(cell, seed)]

    for cell in cfg.cells():
        name = cell["cell"]
        seeds = [sd for sd in cfg.seeds if (name, sd) in by]
        if not seeds:
            continue
        entry: dict[str, Any] = {}
        for m in primary_metrics(cfg):
            vals = [by[(name, sd)].get(m) for sd in seeds]
            mean, ci, n = mean_ci(vals)
            e: dict[str, Any] = {"mean": mean, "ci95": ci, "n": n, "values": vals}
            if name != "uniform":
                common = [sd for sd in seeds if ("uniform", sd) in by]
                diffs = [by[(name, sd)][m] - by[("uniform", sd)][m] for sd in common]
                dm, dci, dn = mean_ci(diffs)
                e.update(diff_mean=dm, diff_ci95=dci, diff_n=dn, diff_values=diffs)
                bm = _block_metric_name(m)
                if bm is not None:
                    per_block = [M.block_metric(arrays(name, sd), bm) - M.block_metric(arrays("uniform", sd), bm)
                                 for sd in common if arrays(name, sd) is not None and arrays("uniform", sd) is not None]
                    if per_block:
                        scale = s.info["test"]["tokens_per_char"] if m.endswith("_bpc") else 1.0
                        pooled = np.mean(per_block, axis=0) * scale
                        bmean, bci, bn = mean_ci(pooled.tolist())
                        e.update(block_diff_mean=bmean, block_diff_ci95=bci, block_n=bn)
            entry[m] = e
        out_cells[name] = entry
    return out_cells


def _block_metric_name(metric: str) -> str | None:
    if metric in ("m1_bpt", "m2_bpt"):
        return metric
    if metric in ("m1_bpc", "m2_bpc"):
        return metric[:2] + "_bpt"
    if "_ce_" in metric:
        return metric
    return None


def noise_floor(rows: list[dict[str, Any]], size: str, metric: str) -> dict[str, Any]:
    """Differences between uniform seeds (every pair): how far two identical recipes land apart."""
    vals = [r[metric] for r in rows if r["size"] == size and r["cell"] == "uniform"]
    pairs = [vals[i] - vals[j] for i in range(len(vals)) for j in range(i + 1, len(vals))]
    return {"pairs": pairs, "max_abs": float(max(map(abs, pairs))) if pairs else float("nan"),
            "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")}


def decide(cfg: StudyConfig, gates: dict[str, Any], cells: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Apply DECISION_RULE per size: 'yes', 'no' or 'not testable at this scale'."""
    tags = [f"r{int(round(r * 100)):02d}" for r in cfg.fixed_rates]
    verdicts = {}
    for size in cfg.sizes:
        g = gates.get(size)
        if g is None or not g["gate_passed"]:
            verdicts[size] = {"answer": "not testable at this scale", "why": "the stage-1 gate failed", "cells": {}}
            continue
        per_cell = {}
        for name, entry in cells.get(size, {}).items():
            if name == "uniform":
                continue

            def below_zero(metric: str) -> bool:
                e = entry[metric]
                return bool(math.isfinite(e.get("diff_ci95", float("nan")))
                            and e["diff_mean"] + e["diff_ci95"] < 0)

            m2 = below_zero("m2_bpt")
            m3 = all(below_zero(f"m3_{t}_ce_raw_q{N_BUCKETS}") for t in tags)
            per_cell[name] = {"m2_better": m2, "m3_top_better": m3, "supported": m2 and m3}
        if not per_cell:
            verdicts[size] = {"answer": "not testable at this scale", "why": "no stage-2 runs", "cells": {}}
        elif any(c["supported"] for c in per_cell.values()):
            verdicts[size] = {"answer": "yes", "why": "a surprise cell meets the decision rule", "cells": per_cell}
        else:
            verdicts[size] = {"answer": "no", "why": "no surprise cell meets the decision rule", "cells": per_cell}
    return verdicts


def _fmt(x: Any, ci: Any = None, digits: int = 3, signed: bool = False) -> str:
    if x is None or not isinstance(x, (int, float)) or not math.isfinite(x):
        return "–"
    text = f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"
    if ci is not None and isinstance(ci, (int, float)) and math.isfinite(ci):
        text += f" ± {ci:.{digits}f}"
    return text


def markdown(cfg: StudyConfig, s: Setup, gates: dict[str, Any], cells: dict[str, Any], floors: dict[str, Any],
             verdicts: dict[str, Any], n_runs: int) -> str:
    """The generated tables of the report (every number from the results JSON)."""
    tags = [f"r{int(round(r * 100)):02d}" for r in cfg.fixed_rates]
    lines = [f"<!-- generated by python -m studies.surprise_masking.staged; {n_runs} stage-2 runs -->", ""]
    v = s.info["validation"]["unigram_bits_per_token"]
    lines += ["Stage 1 and the gate (validation split; unigram model "
              f"{v:.3f} bits/token, threshold {cfg.gate_ratio:.2f} x):", "",
              "| size | steps | tokens seen | train time | validation NELBO bits/token | ratio to unigram | gate | "
              "test M1 bits/token | test M2 bits/token |", "|---|---|---|---|---|---|---|---|---|"]
    for size, g in gates.items():
        lines.append(f"| {size} | {g.get('steps', '–')} | {g.get('tokens_seen', 0):,} | "
                     f"{g.get('train_time_s', float('nan')) / 60:.1f} min | {g['val_m1_bpt']:.3f} | "
                     f"{g['val_ratio_to_unigram']:.3f} | {'passed' if g['gate_passed'] else 'failed'} | "
                     f"{g['m1_bpt']:.3f} | {g['m2_bpt']:.3f} |")
        if g.get("budget_estimate"):
            lines.append(f"| | budget: {json.dumps(g['budget_estimate'])} |||||||")
    for size, entry in cells.items():
        floor = floors[size]
        lines += ["", f"**{size}**: test metrics, mean ± 95% t-interval over seeds (n); Δ = seed-paired difference "
                  "from uniform (95% t-interval over seeds); Δ blocks = the same difference pooled over seeds, "
                  "95% t-interval over the test blocks (item variation only). Lower is better in every column.", "",
                  "| cell | n | M1 bits/char | M2 bits/char | Δ M2 bits/char | Δ M2 blocks | "
                  + " | ".join(f"top-fifth CE @{t[1:]}% | Δ top-fifth @{t[1:]}%" for t in tags) + " |",
                  "|---|---|---|---|---|---|" + "---|---|" * len(tags)]
        for name, m in entry.items():
            uni = name == "uniform"
            row = [name, str(m["m2_bpc"]["n"]), _fmt(m["m1_bpc"]["mean"], m["m1_bpc"]["ci95"]),
                   _fmt(m["m2_bpc"]["mean"], m["m2_bpc"]["ci95"]),
                   "0" if uni else _fmt(m["m2_bpc"].get("diff_mean"), m["m2_bpc"].get("diff_ci95"), 3, True),
                   "0" if uni else _fmt(m["m2_bpc"].get("block_diff_mean"), m["m2_bpc"].get("block_diff_ci95"), 3,
                                        True)]
            for t in tags:
                k = f"m3_{t}_ce_raw_q{N_BUCKETS}"
                row += [_fmt(m[k]["mean"], m[k]["ci95"], 2),
                        "0" if uni else _fmt(m[k].get("diff_mean"), m[k].get("diff_ci95"), 2, True)]
            lines.append("| " + " | ".join(row) + " |")
        lines += ["", "The same top-fifth cross-entropy after the prior correction (the beta of the rate's noise "
                  "bin, fitted on validation), bits; Δ = seed-paired difference from uniform:", "",
                  "| cell | " + " | ".join(f"corrected top-fifth CE @{t[1:]}% | Δ @{t[1:]}%" for t in tags) + " |",
                  "|---|" + "---|---|" * len(tags)]
        for name, m in entry.items():
            row = [name]
            for t in tags:
                k = f"m3_{t}_ce_corr_q{N_BUCKETS}"
                row += [_fmt(m[k]["mean"], m[k]["ci95"], 3),
                        "0" if name == "uniform" else _fmt(m[k].get("diff_mean"), m[k].get("diff_ci95"), 3, True)]
            lines.append("| " + " | ".join(row) + " |")
        lines += ["", f"Noise floor (uniform seed minus uniform seed, every pair): M2 "
                  f"{', '.join(_fmt(x, None, 4, True) for x in floor['m2_bpc']['pairs'])} bits/char; top-fifth CE "
                  + "; ".join(f"@{t[1:]}% " + ", ".join(_fmt(x, None, 3, True)
                                                      for x in floor[f'm3_{t}_ce_raw_q{N_BUCKETS}']['pairs'])
                              for t in tags) + " bits.", ""]
        for gain, what in (("gain", "unigram cross-entropy S(y) minus the model's raw cross-entropy"),
                           ("gain_corr", "the same with the prior-corrected cross-entropy")):
            for t in tags:
                lines += [f"Context gain at mask rate {int(t[1:])}% ({what}, bits; higher = more use of context), "
                          "by surprise quintile of the masked token (q1 = most frequent):", "",
                          "| cell | " + " | ".join(f"q{q}" for q in range(1, N_BUCKETS + 1)) + " |",
                          "|---|" + "---|" * N_BUCKETS]
                for name, m in entry.items():
                    lines.append(f"| {name} | " + " | ".join(_fmt(m[f'm3_{t}_{gain}_q{q}']['mean'],
                                                                  m[f'm3_{t}_{gain}_q{q}']['ci95'], 2)
                                                             for q in range(1, N_BUCKETS + 1)) + " |")
                lines.append("")
    lines += ["Decision rule (fixed before the runs): " + DECISION_RULE, ""]
    for size, vd in verdicts.items():
        lines.append(f"- **{size}: {vd['answer']}** ({vd['why']})"
                     + "".join(f"; {c}: M2 {'better' if d['m2_better'] else 'not better'}, top fifth "
                               f"{'better' if d['m3_top_better'] else 'not better'}" for c, d in vd["cells"].items()))
    return "\n".join(lines) + "\n"


def plot(cfg: StudyConfig, cells: dict[str, Any], results: Path) -> list[Path]:
    """M2 difference from uniform vs T (per direction) and the context gain per quintile (per cell)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    tags = [f"r{int(round(r * 100)):02d}" for r in cfg.fixed_rates]
    colors = {"high": "tab:red", "low": "tab:blue"}
    fig, axes = plt.subplots(1, len(cells), figsize=(5 * len(cells), 3.8), squeeze=False)
    for ax, (size, entry) in zip(axes[0], cells.items()):
        for d in cfg.directions:
            xs, ys, es = [], [], []
            for t in cfg.temperatures:
                e = entry.get(f"surprise_{d}_T{t:g}", {}).get("m2_bpc")
                if e and math.isfinite(e.get("diff_mean", float("nan"))):
                    xs.append(t)
                    ys.append(e["diff_mean"])
                    es.append(e["diff_ci95"] if math.isfinite(e.get("diff_ci95", float("nan"))) else 0.0)
            if xs:
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, color=colors[d],
                            label=f"{d}-surprise tokens masked first")
        ax.axhline(0.0, color="black", lw=0.8, label="uniform (control)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(cfg.temperatures))
        ax.set_xticklabels([f"{t:g}" for t in cfg.temperatures])
        ax.set_xlabel("surprise temperature T")
        ax.set_ylabel("M2 − uniform, bits/char (seed-paired)")
        ax.set_title(f"{size}: prior-corrected test NELBO", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    paths.append(_save(fig, results / f"{STEM}-m2.png"))

    panels = [(size, entry, gain) for size, entry in cells.items() for gain in ("gain", "gain_corr")]
    fig, axes = plt.subplots(len(panels), len(tags), figsize=(5 * len(tags), 3.6 * len(panels)), squeeze=False)
    x = np.arange(1, N_BUCKETS + 1)
    for i, (size, entry, gain) in enumerate(panels):
        for j, t in enumerate(tags):
            ax = axes[i, j]
            for k, (name, m) in enumerate(entry.items()):
                ys = [m[f"m3_{t}_{gain}_q{q}"]["mean"] for q in x]
                es = [m[f"m3_{t}_{gain}_q{q}"]["ci95"] for q in x]
                es = [e if math.isfinite(e) else 0.0 for e in es]
                ax.errorbar(x + 0.05 * (k - len(entry) / 2), ys, yerr=es, marker="o", capsize=2, label=name,
                            color="black" if name == "uniform" else None)
            ax.axhline(0.0, color="gray", lw=0.8)
            ax.set_xticks(x)
            ax.set_xlabel("surprise quintile of the masked token (1 = most frequent)")
            ax.set_ylabel("context gain, bits")
            ax.set_title(f"{size}, mask rate {int(t[1:])}%, {'prior-corrected' if gain == 'gain_corr' else 'raw'}",
                         fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    paths.append(_save(fig, results / f"{STEM}-gain.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(cfg: StudyConfig, s: Setup, argv: list[str], results: Path | None = None) -> dict[str, Any]:
    """Results JSON, per-run CSV, Markdown tables and plots, from the runs on disk."""
    import csv

    results = results or s.out / "results"
    results.mkdir(parents=True, exist_ok=True)
    gates = {size: gate(cfg, s, size, s.out / size_tag(size) / "stage1") for size in cfg.sizes
             if (s.out / size_tag(size) / "stage1_metrics.json").is_file()}
    rows = collect(cfg, s.out)
    cells = {size: paired(cfg, s, rows, size) for size in cfg.sizes if any(r["size"] == size for r in rows)}
    floors = {size: {m: noise_floor(rows, size, m) for m in primary_metrics(cfg)} for size in cells}
    verdicts = decide(cfg, gates, cells)
    data = {"command": "python -m studies.surprise_masking.staged " + " ".join(argv),
            "settings": dataclasses.asdict(cfg), "decision_rule": DECISION_RULE, "setup": s.info, "stage1": gates,
            "cells": cells, "noise_floor": floors, "verdicts": verdicts, "runs": rows}
    _write_json(results / f"{STEM}.json", data)
    if rows:
        keys = list(dict.fromkeys(k for r in rows for k in r if not isinstance(r[k], (list, dict))))
        with open(results / f".{STEM}-runs.csv.tmp", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: (f"{r[k]:.6g}" if isinstance(r.get(k), float) else r.get(k)) for k in keys})
        os.replace(results / f".{STEM}-runs.csv.tmp", results / f"{STEM}-runs.csv")
    (results / f"{STEM}-summary.md").write_text(markdown(cfg, s, gates, cells, floors, verdicts, len(rows)))
    if cells:
        try:
            plot(cfg, cells, results)
        except ImportError:
            logger.info("plots skipped: matplotlib is not installed (pip install matplotlib)")
    if (s.out / "progress.log").is_file():
        shutil.copyfile(s.out / "progress.log", results / f"{STEM}-progress.log")
    return data


# --- command line ------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m studies.surprise_masking.staged",
                                 description="Stage 1: one uniform-masking model from scratch, gated on using context; "
                                             "stage 2: uniform vs surprise-masking branches from it, several seeds; "
                                             "M1-M3 and a pre-stated decision rule. Resumable.")
    ap.add_argument("--out", required=True, help="work folder: corpus, tokenizer, models, logs")
    ap.add_argument("--preset", default="cpu", help=f"starting settings: {', '.join(PRESETS)} [cpu]")
    ap.add_argument("--results-dir", default=None, help="where the JSON/CSV/Markdown/plots go [OUT/results]")
    ap.add_argument("--report-only", action="store_true", help="only (re)write the report from the runs on disk")
    ap.add_argument("--setup-only", action="store_true", help="only write the splits, tokenizer and setup.json (to "
                                                              "carry a prepared OUT to another machine)")
    ap.add_argument("--branch", default=None, help=argparse.SUPPRESS)  # SIZE:CELL:SEED, one child process
    typed.add_arguments(ap, StudyConfig)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run the study (or one child branch); errors end in one line."""
    from emdm_core.cli import run_cli

    return run_cli(_main, argv, interrupted="interrupted; run the same command again to continue")


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    out = Path(os.path.expanduser(args.out))
    out.mkdir(parents=True, exist_ok=True)
    overrides = {f.name: getattr(args, f.name) for f in typed.fields(StudyConfig) if hasattr(args, f.name)}
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    threads_before = torch.get_num_threads()
    try:
        if args.branch:  # a child process: the parent's settings are in OUT/study.json
            cfg = typed.build(StudyConfig, json.loads((out / "study.json").read_text()), origin="study.json",
                              error=TrainError)
            torch.set_num_threads(cfg.threads)
            size, cell_name, seed = args.branch.rsplit(":", 2)
            cell = next(c for c in cfg.cells() if c["cell"] == cell_name)
            s = prepare_setup(cfg, out)
            branch(cfg, s, size, cell, int(seed), stage1(cfg, s, size))
            return 0
        cfg = build_config(args.preset, overrides)
        setup_progress_log(out, logger)
        torch.set_num_threads(cfg.threads)
        _write_json(out / "study.json", dataclasses.asdict(cfg))
        results = Path(os.path.expanduser(args.results_dir)) if args.results_dir else out / "results"
        if args.setup_only:
            s = prepare_setup(cfg, out)
            logger.info("setup written to %s (%s training tokens)", out, f"{s.info['train_tokens']:,}")
            return 0
        if args.report_only:
            write_report(cfg, prepare_setup(cfg, out), argv, results)
        else:
            write_report(cfg, run_study(cfg, out), argv, results)
        data = json.loads((results / f"{STEM}.json").read_text())
        for size, vd in data["verdicts"].items():
            logger.info("answer (%s): %s (%s)", size, vd["answer"], vd["why"])
        logger.info("results: %s/%s.json, %s-summary.md, plots", results, STEM, STEM)
    finally:
        torch.set_num_threads(threads_before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
