"""Duo training (`emdm_train --noise uniform`): the Gaussian-argmax corruption's flip rate follows the noise weight,
a step lowers the loss on a fixed batch, soft tokens reach the embedding, checkpoints decode with uniform noise in
the sampler and lm-eval, --resume continues exactly, and on 4x4 Sudoku the model beats random guessing."""

from __future__ import annotations

import glob
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from emdm_train.config import TrainConfig
from emdm_train.errors import TrainConfigError
from emdm_train.masking import Noise
from emdm_train.trainer import Trainer, train
from emdm_train.uniform_noise import GaussianArgmaxCorruption, keep_probability, symmetric_kl_loss_sum

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def _z(hits: int, n: int, p: float) -> float:
    return (hits - n * p) / math.sqrt(max(n * p * (1 - p), 1e-12))


@pytest.mark.parametrize("k", [11, 200])
@pytest.mark.parametrize("w", [0.2, 0.35, 0.5, 0.8])
def test_flip_rate_follows_the_noise_weight(k, w):
    """The explicit Gaussian argmax (soft path) and the direct draw (hard path) flip tokens at the rate the
    quadrature gives, r(w) = 1 - int phi(z) Phi(z + (1-w)/w)^(K-1) dz (binomial z-tests over 24,000 tokens)."""
    corruption = GaussianArgmaxCorruption(torch.arange(k), k, noise_weight_range=(w, w))
    rows, length = 48, 500
    ids = torch.randint(0, k, (rows, length), generator=torch.Generator().manual_seed(1))
    maskable = torch.ones_like(ids, dtype=torch.bool)
    noise = Noise.draw(rows, length, generator=torch.Generator().manual_seed(2))
    rate = float(1 - keep_probability(w, k))
    n = rows * length
    soft = corruption(ids, maskable, noise=noise, soft_temperature=0.1, row_seeds=list(range(rows)))
    hard = corruption(ids, maskable, noise=noise)
    for batch in (soft, hard):
        flips = int(batch.mask.sum())
        assert abs(_z(flips, n, rate)) < 4.5, (k, w, flips / n, rate)
        changed = batch.input_ids[batch.mask] - ids[batch.mask]
        assert bool((changed != 0).all())
    # a flipped token is uniform over the K - 1 others: the new ids of token 0 spread evenly over 1..K-1
    if k == 11:
        new = hard.input_ids[hard.mask & (ids == 0)]
        counts = torch.bincount(new, minlength=k)[1:].double()
        expected = counts.sum() / (k - 1)
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 35  # chi-square with 9 degrees of freedom: p < 1e-4 above 33.7


def test_default_schedule_sets_alpha_to_one_minus_t():
    """Without a weight range, t ~ U(t_min, t_max) and w is chosen so that P(x_t = x) = alpha + (1 - alpha)/K with
    alpha = 1 - t (the schedule the duo sampler reverses)."""
    k = 11
    corruption = GaussianArgmaxCorruption(torch.arange(k), k, t_min=0.3, t_max=0.3)
    rows, length = 40, 600
    ids = torch.randint(0, k, (rows, length), generator=torch.Generator().manual_seed(3))
    noise = Noise.draw(rows, length, generator=torch.Generator().manual_seed(4))
    batch = corruption(ids, torch.ones_like(ids, dtype=torch.bool), noise=noise)
    assert torch.allclose(batch.alpha, torch.full((rows,), 0.7))
    keep = 0.7 + 0.3 / k
    same = int((batch.input_ids == ids).sum())
    assert abs(_z(same, rows * length, keep)) < 4.5
    assert torch.allclose(batch.weights[0], torch.full((length,), 0.7))  # the row scale is alpha_t


def test_symmetric_kl_penalises_mass_on_wrong_tokens_beyond_cross_entropy():
    labels = torch.tensor([[0]])
    weights = torch.ones(1, 1)
    sharp_wrong = torch.tensor([[[2.0, 4.0, -9.0, -9.0]]])  # p(0) the same in both, the rest spread differently
    spread_wrong = torch.tensor([[[2.0, 3.0, 3.0, 2.9]]])
    ce = [float(torch.nn.functional.cross_entropy(x[0], labels[0])) for x in (sharp_wrong, spread_wrong)]
    kl = [float(symmetric_kl_loss_sum(x, labels, weights, 0.01)) for x in (sharp_wrong, spread_wrong)]
    assert all(k > c for k, c in zip(kl, ce))
    right = torch.tensor([[[20.0, -20.0, -20.0, -20.0]]])
    assert float(symmetric_kl_loss_sum(right, labels, weights, 0.01)) < 0.02


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from test_train_run import grammar_setup

    return grammar_setup(tmp_path_factory.mktemp("duo"), 600)


def _cfg(setup, out, **kw) -> TrainConfig:
    """test_train_run's small recipe, with --noise uniform."""
    from test_train_run import _cfg as grammar_cfg

    return grammar_cfg(setup, out, **{"noise": "uniform", "max_length": 24, "cpu": True, "report_to": "none", **kw})


def test_a_duo_step_lowers_the_loss_on_a_fixed_batch(setup, tmp_path):
    trainer = Trainer(_cfg(setup, tmp_path / "step", lr_scheduler="constant", warmup_steps=0))
    run = trainer.set_up()
    rows = run.order.take(0, 16)
    noise = Noise.draw(16, run.data.max_length, generator=torch.Generator().manual_seed(9))

    def fixed_loss() -> float:
        mb, attn = trainer._micro_batch(run, run.data.train, rows, noise, run.schedule)
        trainer.model.eval()
        with torch.no_grad():
            value = float(trainer.loss_sum(trainer._logits(trainer.model, mb, attn), mb))
        trainer.model.train()
        return value

    before = fixed_loss()
    for step in range(15):
        trainer.train_step(run, step)
    after = fixed_loss()
    assert after < 0.8 * before, (before, after)


def test_soft_tokens_reach_the_embedding(setup, tmp_path):
    """At a tiny tau the soft tokens are one-hot: the logits equal the hard tokens' logits; at a large tau they
    differ (the model reads the mixture)."""
    from emdm_train.uniform_noise import soft_token_inputs

    trainer = Trainer(_cfg(setup, tmp_path / "soft"))
    run = trainer.set_up()
    rows = run.order.take(0, 8)
    noise = Noise.draw(8, run.data.max_length, generator=torch.Generator().manual_seed(5))
    ids, attn, plen = run.data.train.collate(rows, trainer.pad_token_id)
    from emdm_train.masking import maskable_positions

    maskable = maskable_positions(ids, attn, run.unmaskable, plen)
    vocab = trainer.noise_spec.vocabulary()
    model = trainer.model.eval()
    with torch.no_grad():
        for tau, same in ((1e-6, True), (5.0, False)):
            mb = run.schedule(ids, maskable, noise=noise, soft_temperature=tau, row_seeds=list(range(8)))
            hard = trainer.forward_logits(model, mb.input_ids, attn)
            with soft_token_inputs(model, mb, vocab):
                soft = trainer.forward_logits(model, mb.input_ids, attn)
            assert torch.allclose(hard, soft, atol=1e-4) is same


def test_checkpoint_decodes_with_uniform_noise_and_runs_lm_eval_generation(setup, tmp_path):
    from emdm_sampling import generate, load_denoiser

    out = tmp_path / "model"
    result = train(_cfg(setup, out, max_steps=40, eval_every=20, soft_token_steps=10))
    evals = [r["eval_loss"] for r in result.history if "eval_loss" in r]
    assert evals[-1] < evals[0]
    den = load_denoiser(str(out))
    assert den.noise == "uniform"
    specials = {den.tokenizer.pad_token_id, den.tokenizer.cls_token_id, den.tokenizer.sep_token_id,
                den.tokenizer.unk_token_id}
    assert not specials & set(den.noise_vocabulary.tolist())
    assert den.eos_token_id in den.noise_vocabulary.tolist()  # EOS is trained (--mask-eos), so it is noise too
    prompt = den.tokenizer("the small cat", add_special_tokens=False)["input_ids"]
    for sampler in ("duo", "entropy_bound", "margin"):
        res = generate(den, [prompt], sampler=sampler, steps=8, gen_length=8, temperature=1.0, trace=True)
        first = res.trace.to_dict()["steps"][0]["tokens"][0][len(prompt):]
        assert not specials & set(first) and den.mask_token_id not in first  # the canvas holds noise tokens
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    base = [sys.executable, "-m", "lm_eval", "--model", "emdm", "--include_path", str(ROOT / "tasks" / "demo"),
            "--limit", "3", "--device", "cpu"]
    gen = subprocess.run([*base, "--model_args", f"pretrained={out},sampler=duo,steps=8", "--tasks",
                          "emdm_demo_gen", "--output_path", str(tmp_path / "eval")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert gen.returncode == 0, gen.stderr[-2000:]
    assert glob.glob(str(tmp_path / "eval" / "**" / "results_*.json"), recursive=True)
    mc = subprocess.run([*base, "--model_args", f"pretrained={out}", "--tasks", "emdm_demo_mc"], cwd=tmp_path,
                        env=env, capture_output=True, text=True, timeout=300)
    last = [ln for ln in (mc.stderr + mc.stdout).splitlines() if ln.strip()][-1]
    assert mc.returncode != 0 and "uniform-state" in last and "generation tasks" in last


def test_resume_continues_exactly(setup, tmp_path):
    from safetensors.torch import load_file

    common = dict(lr_scheduler="constant", warmup_steps=0, save_every=10, soft_token_steps=15,
                  save_total_limit=None)
    train(_cfg(setup, tmp_path / "full", max_steps=20, **common))
    train(_cfg(setup, tmp_path / "part", max_steps=10, **common))
    train(_cfg(setup, tmp_path / "part", max_steps=20, resume="latest", **common))
    a, b = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(tmp_path / "part" /
                                                                                 "model.safetensors"))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert (tmp_path / "part" / "noise.json").is_file()


@pytest.mark.parametrize("kwargs, message", [
    ({"masking": "surprise"}, "drop --masking"),
    ({"noise": "mask", "soft_token_steps": 5}, "belong to --noise uniform"),
    ({"noise_weight_range": (0.5,)}, "two numbers"),
    ({"noise_weight_range": (0.6, 0.2)}, "0 < lo <= hi <= 1"),
])
def test_bad_duo_options_are_one_line_errors(setup, tmp_path, kwargs, message):
    with pytest.raises(TrainConfigError, match=message) as err:
        Trainer(_cfg(setup, tmp_path / "bad", **kwargs)).set_up()
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_duo_on_4x4_sudoku_beats_random_guessing_paired(tmp_path):
    """A stock BERT trained with --noise uniform (450 steps, the masked e2e test's recipe) solves held-out 4x4
    puzzles with the duo sampler far more often than filling the blanks at random (exact McNemar, same puzzles)."""
    import random

    from emdm_core.stats import paired_counts
    from emdm_sampling import generate, load_denoiser
    from test_study_sudoku_e2e import solves, split_puzzles, train_unstructured_bert

    train_rows, test_rows = split_puzzles()
    train_unstructured_bert(tmp_path, train_rows, "--noise", "uniform")
    den = load_denoiser(tmp_path / "model")
    assert den.noise == "uniform"
    prompts = [den.tokenizer(r["puzzle"])["input_ids"] for r in test_rows]
    out = generate(den, prompts, sampler="duo", steps=16, gen_length=16, temperature=1.0,
                   seeds=list(range(len(test_rows))))
    duo = [int(solves(r["puzzle"], den.tokenizer.decode(g))) for r, g in zip(test_rows, out.generated)]
    rng = random.Random(0)
    guess = [int(solves(r["puzzle"], "".join(c if c != "0" else rng.choice("1234") for c in r["puzzle"])))
             for r in test_rows]
    counts = paired_counts(duo, guess)
    print(f"\n4x4 Duo: solved {sum(duo)}/{len(duo)} with duo, {sum(guess)} by random filling; McNemar p = "
          f"{counts.p_value:.2g}")
    assert sum(duo) > sum(guess) and counts.p_value < 1e-6


def test_emdms_sudoku_architecture_trains_and_decodes_with_its_declared_noise(tmp_path):
    """emdm's own Sudoku model declares its noise vocabulary (the digits 1..n): corrupted cells stay cells, so its
    layout holds; the checkpoint decodes with that noise."""
    import emdm_models.architectures as arch
    from emdm_core.diffusion_noise import NoiseSpec
    from emdm_sampling import generate, load_denoiser

    rows = [{"prompt": "1000000000000000", "response": "1234341221434321"}] * 32
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    init = arch.save_sudoku_model_dir(tmp_path / "init", "cpu", seed=0, grid_size=4, hidden_size=32,
                                      num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                                      peer_attention=True)
    train(TrainConfig(model=str(init), data=str(data), output=str(tmp_path / "out"), from_scratch=True,
                      data_format="prompt_response", noise="uniform", max_length=34, batch_size=16, max_steps=6,
                      val_split=0, eval_every=0, save_every=0, progress=False, cpu=True, report_to="none"))
    spec = NoiseSpec.load(tmp_path / "out")
    den = load_denoiser(str(tmp_path / "out"))
    digits = den.tokenizer.convert_tokens_to_ids(list("1234"))
    assert spec.vocabulary().tolist() == digits == den.noise_vocabulary.tolist()
    out = generate(den, [den.tokenizer(rows[0]["prompt"])["input_ids"]], sampler="duo", steps=8, gen_length=16,
                   temperature=1.0)
    text = den.tokenizer.decode(out.generated[0])
    assert len(text) == 16 and set(text) <= set("1234")


def test_the_self_correction_study_runs_end_to_end(tmp_path):
    """The study's driver on the demo task at a toy budget: both models trained by the CLI, every sampler decoded,
    the paired comparisons and the report written."""
    from studies.self_correction.__main__ import main as study

    assert study(["--task", "demo", "--out", str(tmp_path), "--train-steps", "20", "--eval-items", "4",
                  "--results-dir", str(tmp_path / "results")]) == 0
    result = json.loads((tmp_path / "results" / "demo.json").read_text())
    assert {(r["model"], r["sampler"]) for r in result["decodings"]} == {
        ("masked", "margin"), ("masked", "remdm"), ("masked", "remdm_eta0"), ("duo", "duo"), ("duo", "entropy_bound"),
        ("duo", "margin")}
    assert all(r["n"] == 4 and len(r["outcomes"]) == 4 for r in result["decodings"])
    pair = result["comparisons"][0]
    assert pair["a"] == "duo:duo" and pair["b"] == "masked:margin" and 0 <= pair["mcnemar_p"] <= 1
    assert (tmp_path / "demo" / "duo" / "noise.json").is_file()
    assert not (tmp_path / "demo" / "masked" / "noise.json").exists()
    assert "not testable at this scale" in (tmp_path / "results" / "demo.md").read_text()


def test_the_corruption_works_as_a_dataloader_collate_schedule():
    from emdm_train.masking import MaskingCollator

    corruption = GaussianArgmaxCorruption(torch.arange(3, 20), 20, t_min=0.5, t_max=0.5)
    collate = MaskingCollator(corruption, pad_token_id=0, generator=torch.Generator().manual_seed(0))
    out = collate([{"input_ids": list(range(3, 15))}, {"input_ids": list(range(5, 10)), "prompt_length": 2}])
    assert out["input_ids"].shape == (2, 12) and bool((out["attention_mask"][1, 5:] == 0).all())
    assert bool((out["labels"][1, :2] == -100).all())  # the prompt is neither corrupted nor trained
    assert torch.allclose(out["loss_weights"][0], torch.full((12,), 0.5))  # alpha_t at every corruptible position
