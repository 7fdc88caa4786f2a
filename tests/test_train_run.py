"""End-to-end training on tiny models (in-process, CPU): held-out loss drops, the output loads everywhere."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from emdm_core.surprise import SurpriseTable
from emdm_train.config import TrainConfig, build_parser, load_recipe, parse_args
from emdm_train.trainer import train

ROOT = Path(__file__).resolve().parents[1]
PAIRS = {"cat": "sleeps", "dog": "runs", "bird": "sings", "child": "reads", "fish": "swims", "baby": "cries"}
ADJS = ["small", "big", "old", "young", "red", "green"]
PLACES = ["park", "house", "garden", "river", "market", "tree"]


def grammar_corpus(n: int, seed: int = 0) -> list[str]:
    """Sentences with structure a tiny model can learn: each noun has its own verb."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        noun = rng.choice(list(PAIRS))
        out.append(f"the {rng.choice(ADJS)} {noun} {PAIRS[noun]} in the {rng.choice(PLACES)} .")
    return out


pytestmark = pytest.mark.usefixtures("one_thread")


def grammar_setup(root: Path, n: int) -> dict:
    """A grammar corpus of n sentences (corpus.jsonl) and a tiny BERT whose tokenizer is trained on it."""
    from emdm_models.tiny import build_tiny_checkpoint

    lines = grammar_corpus(n)
    (root / "corpus.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in lines))
    model = build_tiny_checkpoint(root / "tiny", "bert", corpus=lines, hidden_size=64)
    return {"root": root, "data": str(root / "corpus.jsonl"), "model": str(model), "lines": lines}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return grammar_setup(tmp_path_factory.mktemp("train"), 1200)


def _cfg(setup, out, **kw) -> TrainConfig:
    base = dict(model=setup["model"], data=setup["data"], output=str(out), max_steps=20, batch_size=16,
                learning_rate=3e-3, eval_every=0, save_every=0, log_every=10, progress=False, pack=False,
                val_split=0.1, max_length=32)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained(setup):
    """300 steps of uniform masking from scratch (standard init) on the grammar corpus."""
    out = setup["root"] / "run"
    result = train(_cfg(setup, out, max_steps=300, eval_every=100, from_scratch=True,
                        config_overrides="initializer_range=0.02"))
    return out, result


def test_training_lowers_the_held_out_loss(trained):
    out, result = trained
    evals = [r["eval_loss"] for r in result.history if "eval_loss" in r]
    assert len(evals) == 4  # before training, and at steps 100, 200, 300
    assert evals[-1] < 0.4 * evals[0], evals
    losses = [r["loss"] for r in result.history if "loss" in r]
    assert losses[-1] < losses[0]
    logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert logged == result.history and all(r["tokens_per_s"] > 0 for r in logged if "loss" in r)
    assert result.step == 300


def test_output_directory_is_a_complete_checkpoint(trained, setup):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    out, _ = trained
    for name in ("config.json", "model.safetensors", "tokenizer.json", "surprise.safetensors"):
        assert (out / name).is_file(), name
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []
    state = json.loads((out / "checkpoint-300" / "emdm_train_state" / "state.json").read_text())
    assert state["step"] == 300 and state["examples_seen"] == 300 * 16
    model = AutoModelForMaskedLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.mask_token_id is not None
    verbs = {tok.convert_tokens_to_ids(v) for v in PAIRS.values()}
    for noun in PAIRS:  # the masked slot after a noun gets a verb: it learned where verbs go
        ids = tok(f"the small {noun} [MASK] in the park .", return_tensors="pt")["input_ids"]
        pos = int((ids[0] == tok.mask_token_id).nonzero()[0, 0])
        with torch.no_grad():
            assert int(model(input_ids=ids).logits[0, pos].argmax()) in verbs


def test_surprise_table_round_trips_through_the_checkpoint(trained, setup):
    from transformers import AutoTokenizer

    out, _ = trained
    table = SurpriseTable.load(out)
    tok = AutoTokenizer.from_pretrained(out)
    # the trainer counts the training rows (held-out rows excluded): recount them naively
    rows = setup["lines"]
    perm = np.random.default_rng(0).permutation(len(rows))
    held = set(perm[: round(0.1 * len(rows))].tolist())
    naive = np.zeros(table.vocab_size, dtype=np.int64)
    for i, text in enumerate(rows):
        if i not in held:
            for t in (tok(text)["input_ids"] + [tok.eos_token_id])[:32]:
                naive[t] += 1
    assert table.counts.tolist() == naive.tolist()
    assert float(table.surprise[tok.all_special_ids].abs().sum()) == 0.0
    assert torch.equal(SurpriseTable.load(out / "checkpoint-300").surprise, table.surprise)


def test_output_loads_in_emdm_sampling(trained):
    try:
        from emdm_sampling import generate
        from emdm_models.loading import load_denoiser
    except ImportError as exc:  # pragma: no cover - the sampling core is written in parallel
        pytest.skip(f"emdm_models.loading.load_denoiser not available yet: {exc}")
    out, _ = trained
    den = load_denoiser(str(out))
    assert den.surprise is not None and den.surprise.shape[0] == den.vocab_size
    prompt = den.tokenizer("the small cat", add_special_tokens=False)["input_ids"]
    res = generate(den, [prompt], sampler="surprise", steps=8, gen_length=8, seed=0)
    assert len(res.generated[0]) >= 1


def _lm_eval_command() -> list[str]:
    """The plain lm_eval CLI: as installed (the .pth hook registers emdm), or with the same hook installed first."""
    import site

    hooked = any((Path(p) / "emdm_lm_eval.pth").is_file() for p in site.getsitepackages())
    if hooked:
        return [sys.executable, "-m", "lm_eval"]
    boot = ("import sys, runpy; from emdm_eval.registration import install_hook; install_hook(); "
            "sys.argv[0] = 'lm_eval'; runpy.run_module('lm_eval', run_name='__main__', alter_sys=True)")
    return [sys.executable, "-c", boot]


@pytest.mark.slow
def test_output_loads_in_the_lm_eval_cli(trained, tmp_path):
    if importlib.util.find_spec("emdm_eval") is None or importlib.util.find_spec("emdm_eval.model") is None:
        pytest.skip("emdm_eval.model (the `emdm` lm-eval model) does not exist yet")
    out, _ = trained
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    cmd = [*_lm_eval_command(), "--model", "emdm", "--model_args", f"pretrained={out},mc_num=2",
           "--tasks", "emdm_demo_mc", "--include_path", str(ROOT / "tasks" / "demo"), "--limit", "2",
           "--output_path", str(tmp_path / "res")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (res,) = list((tmp_path / "res").rglob("results_*.json"))
    assert "acc,none" in json.loads(res.read_text())["results"]["emdm_demo_mc"]


def test_prompt_response_format_trains_only_the_response(setup, tmp_path):
    from transformers import AutoTokenizer

    from emdm_train.corpus import prepare_data

    rows = [{"question": f"what does the {n} do ?", "answer": f"the {n} {v} ."} for n, v in PAIRS.items()] * 20
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = _cfg(setup, tmp_path / "out", data=str(tmp_path / "qa.jsonl"), prompt_field="question",
               response_field="answer", masking="surprise", max_steps=6)
    tok = AutoTokenizer.from_pretrained(setup["model"])
    bundle = prepare_data(cfg, tok, type("C", (), {"max_position_embeddings": 128})(), progress=False)
    assert bundle.format == "prompt_response"
    row = bundle.train.row(0).tolist()
    plen = int(bundle.train.prompt_lengths[0])
    q, a = rows[0]["question"], rows[0]["answer"]
    assert row[:plen] == tok(q)["input_ids"]
    assert row[plen:] == tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    unmaskable = np.zeros(len(tok), dtype=bool)
    unmaskable[tok.all_special_ids] = True
    unmaskable[tok.eos_token_id] = False
    assert bundle.train.maskable_counts(unmaskable).tolist() == (
        bundle.train.lengths - bundle.train.prompt_lengths).tolist()
    result = train(cfg)
    assert result.step == 6 and (tmp_path / "out" / "model.safetensors").is_file()
    # the recipe beside the weights records the resolved format, so lm-eval prompts the model as it trained
    import yaml

    from emdm_eval.model import EMDMLM

    assert cfg.data_format == "auto"
    assert yaml.safe_load((tmp_path / "out" / "emdm_train_config.yaml").read_text())["data_format"] == \
        "prompt_response"
    lm = EMDMLM(pretrained=str(tmp_path / "out"), steps=2)
    assert lm.prompt_format == "tokenizer" and lm.encode_prompt(q) == row[:plen]


@pytest.mark.parametrize("masking,extra", [("llada", {}), ("entropy", {"entropy_probe_passes": 1}),
                                           ("surprise", {"surprise_mask_first": "low", "grad_accum": 2})])
def test_every_schedule_trains(setup, tmp_path, masking, extra):
    result = train(_cfg(setup, tmp_path / "out", masking=masking, max_steps=8, **extra))
    assert result.step == 8 and np.isfinite([r["loss"] for r in result.history if "loss" in r]).all()


def test_config_only_directory_trains_from_random_init_with_a_separate_tokenizer(setup, tmp_path):
    """As the Sudoku model does: --model <dir with only config.json> --tokenizer <dir>."""
    from transformers import AutoConfig

    cfg_dir = tmp_path / "config_only"
    AutoConfig.from_pretrained(setup["model"]).save_pretrained(cfg_dir)
    assert sorted(p.name for p in cfg_dir.iterdir()) == ["config.json"]
    result = train(_cfg(setup, tmp_path / "out", model=str(cfg_dir), tokenizer=setup["model"], max_steps=4))
    assert result.step == 4
    assert (tmp_path / "out" / "tokenizer.json").is_file() and (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.parametrize("family", ["modernbert", "llada", "dream"])
def test_other_families_train_and_reload(tmp_path, family):
    """Not only BERT: ModernBERT, and LLaDA/Dream-style remote-code checkpoints (aligned logits)."""
    from emdm_models.loading import load_denoiser
    from emdm_models.tiny import DEMO_CORPUS, build_tiny_checkpoint

    model = build_tiny_checkpoint(tmp_path / family, family)
    (tmp_path / "c.txt").write_text("\n".join(DEMO_CORPUS * 4))
    cfg = TrainConfig(model=str(model), data=str(tmp_path / "c.txt"), output=str(tmp_path / "out"), max_steps=3,
                      batch_size=4, max_length=32, trust_remote_code=family != "modernbert", progress=False,
                      eval_every=0, save_every=0, masking="surprise")
    assert train(cfg).step == 3
    den = load_denoiser(str(tmp_path / "out"), trust_remote_code=True)
    assert den.surprise is not None and den.surprise.shape[0] >= den.vocab_size


def test_recipes_parse_and_the_command_line_overrides_them(setup, tmp_path):
    recipes = sorted([*(ROOT / "emdm_train" / "recipes").glob("*.yaml"), *ROOT.glob("studies/*/recipes/*.yaml")])
    assert {p.stem for p in recipes} >= {"tiny-cpu", "surprise", "llada-bert", "ens", "sudoku"}
    for path in recipes:
        TrainConfig.from_dict(load_recipe(path), origin=str(path))
    cfg = parse_args(["--config", str(ROOT / "emdm_train" / "recipes" / "tiny-cpu.yaml"), "--model", "m",
                      "--data", "d", "--output", "o", "--surprise-temperature", "0.5", "--no-pack"])
    assert cfg.surprise_temperature == 0.5 and cfg.pack is False and cfg.masking == "surprise"
    helptext = build_parser().format_help()
    for name in TrainConfig.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in helptext, name
