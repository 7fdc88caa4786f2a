"""RL fine-tuning (`--objective grpo | wd1`, issue 25): a run on a tiny LLaDA-layout model moves the policy toward
rewarded rollouts, a resumed run (also in the middle of a group of inner steps) equals the uninterrupted one, and
bad input ends in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from emdm_train.config import TrainConfig
from emdm_train.errors import TrainConfigError, TrainError
from emdm_train.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")
WORDS = ["alpha", "beta", "gamma", "delta", "one", "two", "three", "four"]


def bad_reward(completion, reference, prompt):
    raise KeyError("boom")


def text_reward(completion, reference, prompt):
    return "yes"


def length_reward(completion, reference, prompt):
    return float(len(completion.split()))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from emdm_models.tiny import build_tiny_checkpoint

    root = tmp_path_factory.mktemp("rl")
    model = build_tiny_checkpoint(root / "llada", family="llada", corpus=[" ".join(WORDS)] * 4, hidden_size=32)
    rows = [{"prompt": f"{a} {b}", "response": b} for a in WORDS for b in WORDS]
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root, model


def _cfg(setup, out: Path, **kw) -> TrainConfig:
    root, model = setup
    base = dict(model=str(model), data=str(root / "data.jsonl"), data_format="prompt_response", output=str(out),
                objective="grpo", batch_size=8, rl_group_size=4, rl_gen_length=3, max_steps=4, learning_rate=5e-3,
                lr_scheduler="constant", warmup_steps=0, log_every=1, eval_every=0, save_every=0, seed=3,
                progress=False, report_to="none", rl_reward="tests.test_train_rl:length_reward", val_split=0.1,
                save_total_limit=None, overwrite=True)
    base.update(kw)
    return TrainConfig.from_dict(base).validate()


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("objective, likelihood", [("grpo", "d1"), ("wd1", "d1"), ("wd1", "elbo")])
def test_an_rl_step_raises_the_likelihood_of_the_better_rollouts(setup, tmp_path, objective, likelihood):
    """After one step, sum_i A_i log pi(y_i) (d1's estimator, the step's own prompt mask) is higher: the policy moved
    toward the rollouts with above-average reward (rewards vary within groups: completions differ in length)."""
    from emdm_models.loading import load_denoiser
    from emdm_train.rl.objectives import d1_token_logps

    train(_cfg(setup, tmp_path / "one", objective=objective, rl_likelihood=likelihood, max_steps=1, save_every=1,
               rl_temperature=1.5))
    saved = torch.load(tmp_path / "one" / "checkpoint-1" / "emdm_train_state" / "rollouts.pt", weights_only=False)
    assert float(saved["advantages"].abs().sum()) > 0, "no reward differences: the test would prove nothing"
    log = [json.loads(x) for x in (tmp_path / "one" / "train_log.jsonl").read_text().splitlines()]
    assert any("reward" in r and "loss" in r for r in log)

    def objective_value(model_dir):
        den = load_denoiser(model_dir)
        with torch.no_grad():
            lp = d1_token_logps(lambda x: den.logits(x, torch.ones_like(x)), saved["ids"], 3, den.mask_token_id,
                                0.15, seed=saved["mask_seeds"][0])
        return float(((lp * saved["completion_mask"]).sum(1) * saved["advantages"]).sum())

    assert objective_value(tmp_path / "one") > objective_value(setup[1])


def test_resume_in_the_middle_of_a_rollout_group_continues_exactly(setup, tmp_path):
    common = dict(rl_iterations=2, rl_beta=0.04, save_every=1)
    train(_cfg(setup, tmp_path / "full", max_steps=4, **common))
    train(_cfg(setup, tmp_path / "part", max_steps=3, **common))  # stops after inner step 1 of the second group
    train(_cfg(setup, tmp_path / "part", max_steps=4, resume="latest", overwrite=False, **common))
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    assert all(torch.equal(a[k], b[k]) for k in a)
    full = [json.loads(x) for x in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    part = [json.loads(x) for x in (tmp_path / "part" / "train_log.jsonl").read_text().splitlines()]
    assert [r.get("kl") for r in full if "kl" in r] == [r.get("kl") for r in part if "kl" in r]


@pytest.mark.parametrize("objective, likelihood", [("grpo", "d1"), ("wd1", "elbo")])
def test_micro_batches_change_nothing(setup, tmp_path, objective, likelihood):
    """--micro-batch-size splits the rollouts into several forward passes (gradient accumulation): the same model."""
    for name, micro in (("whole", None), ("split", 2)):
        train(_cfg(setup, tmp_path / name, objective=objective, rl_likelihood=likelihood, max_steps=2,
                   micro_batch_size=micro))
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "split")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)  # float summation order only
    losses = [[r["loss"] for r in map(json.loads, (tmp_path / n / "train_log.jsonl").read_text().splitlines())
               if "reward" in r] for n in ("whole", "split")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"rl_group_size": 1}, TrainConfigError, "rl-group-size"),
    ({"rl_temperature": 0.0}, TrainConfigError, "rl-temperature"),
    ({"batch_size": 6}, TrainConfigError, "multiple of --rl-group-size"),
    ({"rl_reward": "no_such_reward"}, TrainConfigError, "unknown reward"),
    ({"rl_reward": "tests.nope:f"}, TrainConfigError, "cannot import"),
    ({"rl_reward": "tests.test_train_rl:bad_reward"}, TrainError, "raised KeyError"),
    ({"rl_reward": "tests.test_train_rl:text_reward"}, TrainError, "must be a number"),
    ({"rl_sampler": "nope"}, Exception, "unknown sampler"),
    ({"rl_likelihood": "elbo"}, TrainConfigError, "needs --rl-likelihood d1"),
])
def test_bad_rl_input_is_one_line(setup, tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message) as err:
        train(_cfg(setup, tmp_path / "bad", max_steps=1, **kwargs))
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_two_cpu_processes_split_the_prompt_groups(setup, tmp_path):
    """accelerate launch with 2 processes: each decodes and trains on its own groups; the log holds their mean."""
    import os
    import subprocess
    import sys

    root, model = setup
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m",
                           "emdm_train", "--model", str(model), "--data", str(root / "data.jsonl"), "--output",
                           str(tmp_path / "two"), "--objective", "grpo", "--batch-size", "8", "--rl-group-size", "2",
                           "--rl-gen-length", "3", "--max-steps", "2", "--log-every", "1", "--no-progress",
                           "--rl-reward", "tests.test_train_rl:length_reward", "--report-to", "none"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout
    log = [json.loads(x) for x in (tmp_path / "two" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "reward" in r] == [1, 2]
