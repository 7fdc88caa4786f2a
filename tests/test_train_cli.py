"""The `python -m emdm_train` command as users run it: SIGKILL + --resume, accelerate launch, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from emdm_train.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, demo_training_setup):
    return demo_training_setup(tmp_path_factory.mktemp("cli"), "bert")


def recipe(tiny, out, steps: int, *extra: str) -> list[str]:
    return ["--model", tiny["model"], "--data", tiny["data"], "--output", str(out), "--max-steps", str(steps),
            "--masking", "surprise", "--batch-size", "8", "--max-length", "32", "--learning-rate", "3e-3",
            "--save-every", "20", "--eval-every", "0", "--log-every", "20", "--no-progress", *extra]


def cli(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emdm_train", *args], env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def assert_complete(ckpt: Path) -> None:
    for name in ("config.json", "model.safetensors", "tokenizer.json", "surprise.safetensors",
                 "emdm_train_state/state.json", "emdm_train_state/optimizer.pt", "emdm_train_state/scheduler.pt"):
        assert (ckpt / name).is_file(), f"{ckpt.name} lacks {name}"


@pytest.mark.slow
def test_sigkill_then_resume_continues_exactly(tiny, tmp_path):
    steps = 120
    full = cli(recipe(tiny, tmp_path / "full", steps, "--save-total-limit", "none"))
    assert full.returncode == 0, full.stderr[-2000:]

    out = tmp_path / "killed"
    args = recipe(tiny, out, steps, "--save-total-limit", "none")
    proc = subprocess.Popen([sys.executable, "-m", "emdm_train", *args], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (out / "checkpoint-40").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # a real SIGKILL: no handler, no clean-up
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model.safetensors").exists(), "the run finished before it was killed"
    done = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*") if not p.name.endswith(".tmp"))
    assert 40 in done and max(done) < steps
    for n in done:  # written to checkpoint-N.tmp and renamed: every visible checkpoint is complete
        assert_complete(out / f"checkpoint-{n}")
    (out / f"checkpoint-{max(done) + 20}.tmp").mkdir()  # what a kill during a save leaves behind
    (out / f"checkpoint-{max(done) + 20}.tmp" / "config.json").write_text("{")

    again = cli(args)  # without --resume: refuse to clobber
    assert again.returncode == 2 and "--resume" in again.stderr.strip().splitlines()[-1]
    resumed = cli([*args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming at step {max(done)}" in resumed.stdout
    assert not list(out.glob("*.tmp")), "stale temporary checkpoint left behind"
    assert_complete(out / f"checkpoint-{steps}")
    assert json.loads((out / f"checkpoint-{steps}/emdm_train_state/state.json").read_text())["step"] == steps
    a, b = weights(tmp_path / "full"), weights(out)
    assert a.keys() == b.keys()
    for k in a:  # everything random is a function of (seed, step): bit-identical to the uninterrupted run
        assert torch.equal(a[k], b[k]), k
    full_log = [json.loads(x) for x in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    res_log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    last = [[r for r in log if "loss" in r][-1] for log in (full_log, res_log)]
    assert last[0]["step"] == last[1]["step"] == steps and last[0]["loss"] == last[1]["loss"]
    assert [r for r in full_log if "eval_loss" in r][-1] == [r for r in res_log if "eval_loss" in r][-1]


def _accelerate() -> list[str]:
    script = Path(sys.executable).with_name("accelerate")
    return [str(script)] if script.exists() else [sys.executable, "-m", "accelerate.commands.launch"]


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes_trains_the_same_recipe(tiny, tmp_path):
    launcher = _accelerate()
    if launcher[-1] != "accelerate.commands.launch":
        launcher.append("launch")
    steps = 20
    two = subprocess.run([*launcher, "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
                          "no", "--dynamo_backend", "no", "-m", "emdm_train",
                          *recipe(tiny, tmp_path / "two", steps, "--no-dropout")],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 process(es) x 1 accumulation x 4" in two.stdout
    one = cli(recipe(tiny, tmp_path / "one", steps, "--no-dropout"))
    assert one.returncode == 0, one.stderr[-2000:]
    for run in ("one", "two"):
        state = json.loads((tmp_path / run / f"checkpoint-{steps}/emdm_train_state/state.json").read_text())
        assert state["step"] == steps and state["examples_seen"] == steps * 8
    assert json.loads((tmp_path / "two" / f"checkpoint-{steps}/emdm_train_state/state.json").read_text())[
        "num_processes"] == 2
    # same rows, masks and normaliser per step: equal up to float summation order (parameters whose true
    # gradient is zero, such as attention key biases, are Adam-amplified noise, so compare what the model computes)
    logs = {run: [json.loads(x) for x in (tmp_path / run / "train_log.jsonl").read_text().splitlines()]
            for run in ("one", "two")}
    assert [r["step"] for r in logs["one"]] == [r["step"] for r in logs["two"]]
    for r1, r2 in zip(logs["one"], logs["two"]):
        for key in ("loss", "eval_loss"):
            if key in r1:
                assert r1[key] == pytest.approx(r2[key], rel=1e-4), (key, r1, r2)
    from transformers import AutoModelForMaskedLM

    ids = torch.randint(5, 200, (4, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        la, lb = (AutoModelForMaskedLM.from_pretrained(tmp_path / run)(input_ids=ids).logits for run in ("one", "two"))
    assert torch.allclose(la, lb, atol=1e-3), (la - lb).abs().max()


# --- bad input: one line, exit status 2 -------------------------------------------------------------------------


def run_main(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err.strip()
    return code, err


def _bad(tiny, tmp_path, *extra: str, data: str | None = None, model: str | None = None) -> list[str]:
    args = recipe(tiny, tmp_path / "out", 2, *extra)
    if data is not None:
        args[args.index("--data") + 1] = data
    if model is not None:
        args[args.index("--model") + 1] = model
    return args


def test_empty_dataset(tiny, tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_text("")
    code, err = run_main(_bad(tiny, tmp_path, data=str(tmp_path / "empty.jsonl")), capsys)
    assert code == 2 and err.startswith("error: ") and "\n" not in err and "empty" in err
    (tmp_path / "blank.txt").write_text("\n\n   \n")
    code, err = run_main(_bad(tiny, tmp_path, data=str(tmp_path / "blank.txt")), capsys)
    assert code == 2 and "\n" not in err and ("no usable examples" in err or "no examples" in err)


def test_missing_text_column(tiny, tmp_path, capsys):
    (tmp_path / "d.jsonl").write_text('{"body": "the cat sleeps ."}\n{"body": "the dog runs ."}\n')
    code, err = run_main(_bad(tiny, tmp_path, data=str(tmp_path / "d.jsonl")), capsys)
    assert code == 2 and "\n" not in err
    assert "column 'text' not in" in err and "body" in err and "--text-column" in err


@pytest.mark.parametrize("value", ["0", "-1"])
def test_non_positive_temperature(tiny, tmp_path, capsys, value):
    code, err = run_main(_bad(tiny, tmp_path, "--surprise-temperature", value), capsys)
    assert code == 2 and "\n" not in err and "--surprise-temperature must be > 0" in err


def test_model_without_mask_token(tiny, tmp_path, capsys):
    from transformers import BertConfig, BertForMaskedLM

    from emdm_models.tiny import train_tokenizer

    tok = train_tokenizer(with_mask=False)
    path = tmp_path / "nomask"
    BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=64)).save_pretrained(path)
    tok.save_pretrained(path)
    code, err = run_main(_bad(tiny, tmp_path, model=str(path)), capsys)
    assert code == 2 and "\n" not in err and "no mask token" in err and "--add-mask-token" in err
    code, _ = run_main(_bad(tiny, tmp_path, "--add-mask-token", "--overwrite", model=str(path)), capsys)
    assert code == 0
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path / "out").mask_token == "[MASK]"


@pytest.mark.parametrize("extra,needle", [
    (["--masking", "nope"], "unknown --masking 'nope'"),
    (["--batch-size", "7", "--grad-accum", "2"], "not divisible"),
    (["--entropy-temperature", "-1"], "--entropy-temperature must be >= 0"),
    (["--config-overrides", "no_such_field=1"], "--config-overrides"),
])
def test_other_bad_options(tiny, tmp_path, capsys, extra, needle):
    code, err = run_main(_bad(tiny, tmp_path, *extra), capsys)
    assert code == 2 and "\n" not in err and needle in err, err


def test_missing_paths_and_bad_recipe(tiny, tmp_path, capsys):
    code, err = run_main(_bad(tiny, tmp_path, data=str(tmp_path / "nope.jsonl")), capsys)
    assert code == 2 and "\n" not in err and "does not exist" in err
    code, err = run_main(_bad(tiny, tmp_path, model=str(tmp_path / "no-model")), capsys)
    assert code == 2 and "\n" not in err and "does not exist" in err
    (tmp_path / "r.yaml").write_text("learning_rat: 1e-3\n")
    code, err = run_main(["--config", str(tmp_path / "r.yaml")], capsys)
    assert code == 2 and "unknown option 'learning_rat'" in err and "learning_rate" in err


def test_real_cli_prints_one_line_and_no_traceback(tiny, tmp_path):
    proc = cli(_bad(tiny, tmp_path, "--surprise-temperature", "0"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: --surprise-temperature must be > 0")
    helped = cli(["--help"])
    assert helped.returncode == 0 and "--surprise-temperature" in helped.stdout and "--resume" in helped.stdout


def test_a_log_file_gets_log_lines_not_progress_bar_refreshes(demo_training_setup, tmp_path):
    """Issue 26, item 7: with stderr not a terminal (a log file, a pipe) the training shows its periodic log lines
    and no progress-bar refreshes (tqdm writes each one as a line there: 408 lines for 300 steps)."""
    setup = demo_training_setup(tmp_path, "bert")
    proc = subprocess.run([sys.executable, "-m", "emdm_train", "--model", setup["model"], "--data", setup["data"],
                           "--output", str(tmp_path / "run"), "--max-steps", "40", "--log-every", "20",
                           "--eval-every", "0", "--save-every", "0", "--batch-size", "4", "--max-length", "16",
                           "--report-to", "none"], capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\r" not in proc.stderr and "training:" not in proc.stderr
    assert "step 20/40" in proc.stdout and "step 40/40" in proc.stdout


def test_a_negative_value_after_a_flag_is_a_value():
    """`--noise-weight-range -1,2` reaches the option's own check (one line naming the range), not argparse's
    "expected one argument"."""
    from emdm_train.config import parse_args
    from emdm_train.errors import TrainConfigError

    with pytest.raises(TrainConfigError) as err:
        parse_args(["--model", "m", "--data", "d", "--output", "o", "--max-steps", "2", "--noise", "uniform",
                    "--noise-weight-range", "-1,2"])
    assert "noise-weight-range" in str(err.value) and "\n" not in str(err.value)
