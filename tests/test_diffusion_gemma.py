"""DiffusionGemma through emdm: the tiny random checkpoint decodes exactly as transformers' `model.generate`, rows
decode alike in any batch, and the plain `lm_eval` CLI runs generation tasks (likelihood tasks fail in one line)."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from emdm_core.errors import ConfigError
from emdm_models.tiny import build_tiny_checkpoint
from emdm_sampling import generate, load_denoiser

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("transformers.models.diffusion_gemma")


@pytest.fixture(scope="module")
def dg_path(tmp_path_factory) -> str:
    return str(build_tiny_checkpoint(tmp_path_factory.mktemp("dg") / "diffusion_gemma", "diffusion_gemma"))


@pytest.fixture(scope="module")
def dg(dg_path):
    return load_denoiser(dg_path)


def _prompt(den, text="the capital of france is"):
    return den.tokenizer(text, add_special_tokens=False)["input_ids"]


def _reference(den, prompt, seed, **kwargs):
    """transformers' own generate after torch.manual_seed(seed): the generated ids."""
    torch.manual_seed(seed)
    out = den.model.generate(torch.tensor([prompt]), **kwargs)
    return out.sequences[0, len(prompt):].tolist(), out


# emdm settings <-> model.generate settings (entropy bound, temperature schedule, stop rule)
SETTINGS = [
    ({}, {}),  # DiffusionGemma's defaults: bound 0.1, T 0.8 -> 0.4, stable 1 step and mean entropy < 0.005
    ({"stability_threshold": 0, "confidence_threshold": 100.0},
     {"stability_threshold": 0, "confidence_threshold": 100.0}),  # stops after one pass per canvas
    ({"entropy_bound": 1000.0, "stability_threshold": 1, "confidence_threshold": 100.0, "temperature": 0.05,
      "temperature_end": 0.01},
     {"sampler_config": "bound 1000", "stability_threshold": 1, "confidence_threshold": 100.0, "t_max": 0.05,
      "t_min": 0.01}),  # accepts everything; stops once the argmax is stable
]


@pytest.mark.parametrize("setting", range(len(SETTINGS)))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_emdm_equals_model_generate_token_for_token(dg, setting, seed):
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig

    ours, theirs = SETTINGS[setting]
    theirs = dict(theirs)
    if "sampler_config" in theirs:
        theirs["sampler_config"] = EntropyBoundSamplerConfig(entropy_bound=1000.0)
    prompt = _prompt(dg)
    ref, out_ref = _reference(dg, prompt, seed, max_new_tokens=16, max_denoising_steps=6, **theirs)
    options = {"temperature": 0.8, "temperature_end": 0.4, **ours}
    out = generate(dg, [prompt], sampler="entropy_bound", steps_per_block=6, gen_length=16, rng="torch", seed=seed,
                   **options)
    assert out.sequences[0][len(prompt):] == ref
    # the same forward passes: tokens per forward as transformers counts it (16 tokens, no padding)
    assert 16 / out.nfe == pytest.approx(float(out_ref.tokens_per_forward[0]))
    if setting == 1:
        assert out.nfe == 2  # one pass per canvas


def test_early_stop_and_eos_cut_match_the_reference(dg):
    """stop_at_eos ends a row at the canvas holding its first EOS (as generate's EOS criterion does); the text up to
    EOS is the reference's. Seeds are scanned until some output holds an EOS, so the path is covered."""
    prompt = _prompt(dg, "the cat")
    eos = dg.eos_token_id
    seen_eos = 0
    for seed in range(40):
        ref, _ = _reference(dg, prompt, seed, max_new_tokens=24, max_denoising_steps=4)
        out = generate(dg, [prompt], sampler="entropy_bound", steps_per_block=4, gen_length=24, temperature=0.8,
                       temperature_end=0.4, rng="torch", seed=seed, stop_at_eos=True)
        cut = ref[:ref.index(eos)] if eos in ref else ref
        assert out.generated[0] == cut
        if eos in ref:
            seen_eos += 1
            assert out.nfe == 4 * (ref.index(eos) // 8 + 1)  # no pass after the canvas with the EOS
    assert seen_eos >= 1


def test_left_padded_batch_decodes_like_single_rows(dg):
    prompts = [_prompt(dg), _prompt(dg, "the cat"), _prompt(dg, "one two three four five six")]
    for rng in ("counter", "torch"):
        kw = dict(sampler="entropy_bound", steps_per_block=4, gen_length=12, temperature=0.8, temperature_end=0.4,
                  rng=rng)
        batch = generate(dg, prompts, seeds=[5, 6, 7], **kw)
        for i, prompt in enumerate(prompts):
            alone = generate(dg, [prompt], seeds=[5 + i], **kw)
            assert alone.sequences[0] == batch.sequences[i], (rng, i)
    # gen_length 12 is completed to two canvases of 8; the text is cut back to 12 tokens
    assert all(len(g) <= 12 for g in batch.generated)


def test_rows_that_stop_at_different_passes_decode_like_single_rows(dg):
    """With the stop rule on (accept all, stop on a stable argmax) rows leave their canvases at different passes, so
    the encoder caches are split and regrouped between rows; each row still decodes as it does alone."""
    prompts = [_prompt(dg), _prompt(dg, "the cat"), _prompt(dg, "one two three four five six"), _prompt(dg, "a bird")]
    kw = dict(sampler="entropy_bound", steps_per_block=12, gen_length=32, temperature=0.05, temperature_end=0.01,
              entropy_bound=1000.0, stability_threshold=1, confidence_threshold=100.0)
    for cache in ("auto", "none"):
        batch = generate(dg, prompts, seeds=[0, 1, 2, 3], cache=cache, **kw)
        assert len(set(batch.row_nfe)) > 1  # the rows did part ways
        for i, prompt in enumerate(prompts):
            assert generate(dg, [prompt], seeds=[i], **kw).sequences[0] == batch.sequences[i], (cache, i)


def test_prefix_cache_equals_reencoding_every_pass(dg):
    prompts = [_prompt(dg), _prompt(dg, "the cat")]
    kw = dict(sampler="entropy_bound", steps_per_block=4, gen_length=16, temperature=0.8, temperature_end=0.4,
              seeds=[1, 2])
    cached = generate(dg, prompts, cache="auto", **kw)
    fresh = generate(dg, prompts, cache="none", **kw)
    assert cached.sequences == fresh.sequences
    assert cached.nfe_full == 2 and cached.nfe_partial == 6  # the prefix is encoded once per canvas
    assert fresh.nfe_full == 8


@pytest.mark.parametrize("sampler", ["margin", "top_prob", "entropy", "duo", "remdm", "entropy_bound"])
def test_every_uniform_capable_strategy_runs(dg, sampler):
    out = generate(dg, [_prompt(dg)], sampler=sampler, steps=8, gen_length=16, temperature=1.0, seed=0)
    assert len(out.generated[0]) > 0 and out.nfe == 8


@pytest.mark.parametrize("kwargs, message", [
    ({"block_length": 4}, "canvases of 8 tokens"),
    ({"cache": "prefix"}, "caches its encoder"),
    ({"cfg_scale": 1.0}, "cfg_scale"),
])
def test_bad_settings_are_one_line_errors(dg, kwargs, message):
    with pytest.raises(ConfigError, match=message) as err:
        generate(dg, [_prompt(dg)], sampler="entropy_bound", steps=8, gen_length=16, **kwargs)
    assert "\n" not in str(err.value)


def test_family_defaults_come_from_the_generation_config(dg_path, tmp_path):
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import (DiffusionGemmaGenerationConfig,
                                                                                 EntropyBoundSamplerConfig)
    import shutil

    den = load_denoiser(dg_path)
    assert den.sampler_defaults() == {"sampler": "entropy_bound", "stop_at_eos": True, "steps_per_block": 48,
                                      "temperature": 0.8,
                                      "temperature_end": 0.4, "entropy_bound": 0.1, "stability_threshold": 1,
                                      "confidence_threshold": 0.005}
    own = tmp_path / "own"
    shutil.copytree(dg_path, own)
    DiffusionGemmaGenerationConfig(max_denoising_steps=12, t_min=0.2, t_max=0.6,
                                   sampler_config=EntropyBoundSamplerConfig(entropy_bound=0.3)).save_pretrained(own)
    got = load_denoiser(str(own)).sampler_defaults()
    assert (got["steps_per_block"], got["temperature"], got["temperature_end"], got["entropy_bound"]) == \
        (12, 0.6, 0.2, 0.3)


def _lm_eval(model_args: str, tasks: str, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "lm_eval", "--model", "emdm", "--model_args", model_args, "--tasks", tasks,
           "--include_path", str(ROOT / "tasks" / "demo"), "--limit", "3", "--output_path", str(out),
           "--log_samples", "--device", "cpu"]
    return subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True, timeout=300)


def test_lm_eval_cli_generates_with_the_family_sampler(dg_path, tmp_path):
    pytest.importorskip("lm_eval")
    proc = _lm_eval(f"pretrained={dg_path},steps_per_block=4", "emdm_demo_gen", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = glob.glob(str(tmp_path / "out" / "**" / "results_*.json"), recursive=True)
    res = json.loads(Path(path).read_text())
    assert res["results"]["emdm_demo_gen"]["sample_len"] == 3
    assert "entropy_bound" in proc.stderr  # no sampler named: DiffusionGemma's own decoding
    proc = _lm_eval(f"pretrained={dg_path}", "emdm_demo_mc", tmp_path / "mc")
    lines = [ln for ln in (proc.stderr + proc.stdout).strip().splitlines() if ln.strip()]
    assert proc.returncode != 0
    assert "no tractable likelihood" in lines[-1] and "generation tasks (generate_until) work" in lines[-1]


def test_the_sampling_cli_decodes_with_the_family_sampler_unless_told(dg_path, capsys):
    from emdm_sampling.__main__ import main

    assert main(["--pretrained", dg_path, "--gen-length", "16", "--steps-per-block", "3"]) == 0
    assert "[entropy_bound] 6 forward passes" in capsys.readouterr().out  # two canvases of 3 passes
    assert main(["--pretrained", dg_path, "--gen-length", "16", "--steps", "8", "--sampler", "margin"]) == 0
    assert "[margin] 8 forward passes" in capsys.readouterr().out
