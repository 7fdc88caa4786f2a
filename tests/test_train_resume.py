"""Runs that cannot lie: a checkpoint is complete only with every file its manifest lists; resume refuses an
incomplete one (and falls back to the newest complete one); the final model is verified; a run never appends to
another run's log and a resumed log has no duplicate records; unusable output folders fail in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emdm_train.__main__ import main
from emdm_train.checkpoints import checkpoint_problem, list_checkpoints, read_manifest

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from emdm_models.tiny import DEMO_CORPUS, build_tiny_checkpoint

    root = tmp_path_factory.mktemp("resume")
    (root / "c.txt").write_text("\n".join(DEMO_CORPUS * 6))
    return {"model": str(build_tiny_checkpoint(root / "m", "bert")), "data": str(root / "c.txt")}


def args(tiny, out, steps, *extra):
    return ["--model", tiny["model"], "--data", tiny["data"], "--output", str(out), "--max-steps", str(steps),
            "--batch-size", "4", "--max-length", "16", "--save-every", "2", "--eval-every", "2", "--log-every", "1",
            "--save-total-limit", "none", "--no-progress", "--report-to", "none", *extra]


def run(argv, capsys):
    code = main(argv)
    return code, capsys.readouterr()


def steps_logged(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


def test_checkpoints_carry_a_manifest_of_every_file(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(args(tiny, out, 4), capsys)[0] == 0
    assert [s for s, _ in list_checkpoints(out)] == [2, 4]
    files = read_manifest(out / "checkpoint-4")
    assert {"model.safetensors", "tokenizer.json", "emdm_train_state/state.json",
            "emdm_train_state/optimizer.pt"} <= set(files)
    assert all(set(entry) == {"size", "sha256"} for entry in files.values())
    # the final model at the top equals the last checkpoint's files
    for name in (n for n in files if "/" not in n):
        assert (out / name).stat().st_size == files[name]["size"], name


@pytest.mark.parametrize("lost", ["model.safetensors", "tokenizer.json", "emdm_train_state/optimizer.pt"])
def test_resume_refuses_an_incomplete_checkpoint_and_takes_the_previous_one(tiny, tmp_path, capsys, lost):
    out = tmp_path / "run"
    assert run(args(tiny, out, 4), capsys)[0] == 0
    (out / "checkpoint-4" / lost).unlink()  # a prune or copy interrupted, a file deleted
    assert checkpoint_problem(out / "checkpoint-4") == f"checkpoint-4 lacks {lost}"
    code, io = run(args(tiny, out, 6, "--resume"), capsys)
    assert code == 0
    assert f"skips checkpoint-4: checkpoint-4 lacks {lost}" in io.out
    assert "resuming at step 2 from" in io.out
    assert steps_logged(out) == [1, 2, 3, 4, 5, 6]  # records after step 2 rewritten once, not appended


def test_resume_of_a_named_incomplete_checkpoint_is_one_line(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(args(tiny, out, 2), capsys)[0] == 0
    weights = out / "checkpoint-2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated: the size no longer matches
    code, io = run(args(tiny, out, 4, "--resume", str(out / "checkpoint-2")), capsys)
    assert code == 2 and io.err.count("\n") == 1
    assert "is not a complete emdm_train checkpoint" in io.err and "the manifest says" in io.err


def test_a_changed_file_fails_the_hash_check(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(args(tiny, out, 2), capsys)[0] == 0
    state = out / "checkpoint-2" / "emdm_train_state" / "state.json"
    text = state.read_text()
    state.write_text(text.replace('"step": 2', '"step": 3'))  # same length, other content
    assert checkpoint_problem(out / "checkpoint-2") is None
    assert "does not match its manifest" in checkpoint_problem(out / "checkpoint-2", hashes=True)


def test_a_new_run_never_appends_to_another_runs_log(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(args(tiny, out, 2), capsys)[0] == 0
    for p in out.glob("checkpoint-*"):  # only the other run's final files are left
        import shutil

        shutil.rmtree(p)
    code, io = run(args(tiny, out, 2), capsys)
    assert code == 2 and "already holds another run (train_log.jsonl)" in io.err and "--overwrite" in io.err
    assert run(args(tiny, out, 2, "--overwrite"), capsys)[0] == 0
    assert steps_logged(out) == [1, 2]


@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_unusable_output_folders_are_one_line(tiny, tmp_path, capsys, where):
    if where == "under-a-file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "run"
    else:
        out = Path("/proc/emdm-run")
    code, io = run(args(tiny, out, 2), capsys)
    assert code == 2 and io.err.count("\n") == 1 and io.err.startswith("error:") and "Traceback" not in io.err


def test_sharded_optimizer_state_round_trips_through_accelerate(tiny, tmp_path, monkeypatch):
    """The FSDP / DeepSpeed checkpoint path (optimizer state through accelerate's save_state / load_state), run on
    one CPU process: accelerate shards only on accelerators, so this checks emdm's side of it (what is written, the
    refusal to mix layouts, exact resume), not the sharding."""
    import shutil

    import torch
    from safetensors.torch import load_file

    from emdm_train.config import parse_args
    from emdm_train.trainer import SHARDED_STATE, STATE_DIR, Trainer

    def trainer(out, *extra, sharded=True):
        t = Trainer(parse_args(args(tiny, out, 6, "--eval-every", "0", *extra)))
        t.sharded = sharded
        return t

    trainer(tmp_path / "full").run()
    out = tmp_path / "cut"
    trainer(out).run()
    state = out / "checkpoint-4" / STATE_DIR
    assert (state / SHARDED_STATE).is_dir() and not (state / "optimizer.pt").exists()
    assert read_manifest(out / "checkpoint-4") and checkpoint_problem(out / "checkpoint-4") is None
    shutil.rmtree(out / "checkpoint-6")  # as if killed after checkpoint-4
    for f in out.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(Exception, match="same accelerate configuration"):
        trainer(out, "--resume", sharded=False).run()
    trainer(out, "--resume").run()
    a, b = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
