"""`emdm_train --lora`: PEFT adapters on a tiny LLaDA (Llama backbone), evaluated through the real lm-eval CLI,
merged, resumed after SIGKILL; activation checkpointing gives the same loss and gradients."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore",
       "EMDM_NO_RELAUNCH": "1"}

pytestmark = pytest.mark.usefixtures("one_thread")
pytest.importorskip("peft")


@pytest.fixture(scope="module")
def base(tmp_path_factory, demo_training_setup):
    return demo_training_setup(tmp_path_factory.mktemp("lora"), "llada")


def recipe(base, out, steps: int, *extra: str) -> list[str]:
    return ["--model", base["model"], "--data", base["data"], "--output", str(out), "--max-steps", str(steps),
            "--lora", "--lora-rank", "8", "--lora-alpha", "16", "--batch-size", "8", "--max-length", "32",
            "--learning-rate", "1e-2", "--save-every", "10", "--eval-every", "30", "--log-every", "5", "--seed", "1",
            "--no-progress", "--report-to", "none", "--save-total-limit", "none", *extra]


def cli(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emdm_train", *args], env=ENV, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def adapter_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def trained(base):
    out = base["root"] / "run"
    proc = cli(recipe(base, out, 30, "--merge-lora"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_lora_trains_the_adapter_only_and_the_loss_falls(base, trained):
    out, proc = trained
    assert "LoRA (new): trainable" in proc.stdout
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    evals = [r["eval_loss"] for r in log if "eval_loss" in r]  # the held-out loss (fixed noise) at 0 and 30
    assert len(evals) == 2 and evals[-1] < evals[0] * 0.9, evals
    for name in ("adapter_config.json", "adapter_model.safetensors", "surprise.safetensors", "tokenizer.json"):
        assert (out / name).is_file(), name
    assert not (out / "model.safetensors").exists()  # the adapter, not a copy of the base
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == os.path.abspath(base["model"])
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                             "down_proj"}  # the Llama family's projections
    weights = adapter_weights(out)
    assert weights and all("lora_" in k for k in weights)


def test_adapter_loads_three_ways_and_merge_gives_the_same_logits(base, trained):
    from emdm_sampling import load_denoiser

    out, _ = trained
    ids = torch.tensor([[5, 9, 12, 7, 3, 8]])
    plain = load_denoiser(base["model"]).logits(ids)
    with_peft = load_denoiser(base["model"], peft=str(out))
    by_adapter_dir = load_denoiser(out)  # the base is read from the adapter's config
    merged = load_denoiser(out / "merged")
    assert not torch.allclose(with_peft.logits(ids), plain, atol=1e-4)  # the adapter changed the model
    assert torch.allclose(by_adapter_dir.logits(ids), with_peft.logits(ids), atol=1e-5)
    assert torch.allclose(merged.logits(ids), with_peft.logits(ids), atol=1e-4)
    assert by_adapter_dir.surprise is not None and merged.surprise is not None


@pytest.mark.slow
def test_adapter_evaluates_through_the_real_lm_eval_cli(base, trained, tmp_path):
    out, _ = trained
    res_dir = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "emdm", "--model_args",
         f"pretrained={base['model']},peft={out},steps=4,mc_num=4", "--tasks", "emdm_demo_gen,emdm_demo_mc",
         "--include_path", str(ROOT / "tasks"), "--limit", "2", "--output_path", str(res_dir)],
        env=ENV, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = glob.glob(str(res_dir / "**" / "results_*.json"), recursive=True)
    res = json.loads(Path(path).read_text())["results"]
    assert 0.0 <= res["emdm_demo_gen"]["exact_match,none"] <= 1.0 and 0.0 <= res["emdm_demo_mc"]["acc,none"] <= 1.0


@pytest.mark.slow
def test_sigkill_then_resume_with_lora_reaches_the_same_adapter(base, trained, tmp_path):
    steps = 30
    out = tmp_path / "killed"
    args = recipe(base, out, steps)
    proc = subprocess.Popen([sys.executable, "-m", "emdm_train", *args], env=ENV, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "checkpoint-10").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (out / "adapter_model.safetensors").exists()
    resumed = cli([*args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at step" in resumed.stdout and "LoRA (resumed from" in resumed.stdout
    a, b = adapter_weights(trained[0]), adapter_weights(out)
    assert a.keys() == b.keys()
    for k in a:  # the same adapter as the uninterrupted run
        assert torch.equal(a[k], b[k]), k


def test_gradient_checkpointing_flag_trains_the_same(base, tmp_path):
    common = ["--model", base["model"], "--data", base["data"], "--max-steps", "3", "--batch-size", "4",
              "--max-length", "32", "--eval-every", "0", "--save-every", "0", "--log-every", "1", "--no-progress",
              "--report-to", "none"]
    plain = cli([*common, "--output", str(tmp_path / "plain")])
    ckpt = cli([*common, "--output", str(tmp_path / "ckpt"), "--gradient-checkpointing"])
    assert plain.returncode == 0 and ckpt.returncode == 0, ckpt.stderr[-2000:]
    logs = [[json.loads(x) for x in (tmp_path / d / "train_log.jsonl").read_text().splitlines()]
            for d in ("plain", "ckpt")]
    losses = [[r.get("loss", r.get("eval_loss")) for r in log] for log in logs]
    assert len(losses[0]) == 5  # held-out loss at 0, three steps, held-out loss at 3
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_lora_option_errors_are_one_line(base, tmp_path):
    proc = cli(["--model", base["model"], "--data", base["data"], "--output", str(tmp_path / "x"), "--max-steps",
                "2", "--qlora"])
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == \
        "error: --qlora trains LoRA adapters on a 4-bit base: add --lora"
    proc = cli(["--model", base["model"], "--data", base["data"], "--output", str(tmp_path / "y"), "--max-steps",
                "2", "--lora", "--from-scratch"])
    assert proc.returncode == 2 and "drop --from-scratch" in proc.stderr.strip().splitlines()[-1]
    proc = cli(["--model", base["model"], "--data", base["data"], "--output", str(tmp_path / "z"), "--max-steps",
                "2", "--lora", "--lora-target-modules", "no_such_layer", "--no-progress", "--report-to", "none"])
    assert proc.returncode == 2 and "--lora-target-modules" in proc.stderr.strip().splitlines()[-1]
    proc = cli(["--model", base["model"], "--data", base["data"], "--output", str(tmp_path / "w"), "--max-steps",
                "2", "--lora", "--lora-target-modules", "q_proj,no_such_layer", "--no-progress", "--report-to",
                "none"])  # one good name, one misspelled: refused, not silently dropped
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "no_such_layer name no layer" in last and "q_proj" in last


@pytest.mark.parametrize("family", ["llada", "bert", "sudoku"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_checkpoints, family, tmp_path):
    from emdm_models.architectures import save_sudoku_model_dir
    from emdm_sampling import load_denoiser

    path = (save_sudoku_model_dir(tmp_path / "sudoku", "cpu", num_hidden_layers=2, hidden_size=32,
                                  num_attention_heads=4, intermediate_size=64, peer_attention=True)
            if family == "sudoku" else tiny_checkpoints[family])
    den = load_denoiser(path)
    model = den.model.float().train()
    torch.manual_seed(0)
    length = 164 if family == "sudoku" else 12
    if family == "sudoku":
        ids = torch.tensor([den.tokenizer("0" * 81)["input_ids"] + [den.mask_token_id] * 81 + [4]])
    else:
        ids = torch.randint(5, 40, (2, length))
        ids[:, ::3] = den.mask_token_id
    labels = torch.where(ids == den.mask_token_id, torch.randint(5, 14, ids.shape), -100)

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same dropout masks (recomputation replays the RNG state)
        logits = type(den).forward_logits(model, ids, torch.ones_like(ids))
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss_a, grads_a = loss_and_grads()
    model.activation_checkpointing_enable({"use_reentrant": False})
    assert model.is_activation_checkpointing
    loss_b, grads_b = loss_and_grads()
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-6, rtol=1e-5), name
