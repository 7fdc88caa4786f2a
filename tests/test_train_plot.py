"""The loss-curve plot reads a real training log and writes a PNG."""

from __future__ import annotations

import json

import pytest

from emdm_train.plot import main, read_log


def test_plot_writes_a_png(tmp_path):
    log = [{"step": 0, "eval_loss": 2.2}, {"step": 10, "loss": 1.9}, {"step": 20, "loss": 1.5},
           {"step": 20, "eval_loss": 1.4}]
    (tmp_path / "train_log.jsonl").write_text("\n".join(json.dumps(r) for r in log))
    assert main([str(tmp_path), "--out", str(tmp_path / "loss.png")]) == 0
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(read_log(tmp_path)) == 4


def test_missing_log_is_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "train_log.jsonl does not exist" in capsys.readouterr().err


def test_compare_runs_writes_one_png(tmp_path, capsys):
    for name, scale in (("a", 1.0), ("b", 0.5)):
        (tmp_path / name).mkdir()
        log = [{"step": s, "eval_loss": scale * 2 / (1 + s)} for s in (0, 10, 20)] + [{"step": 10, "loss": scale}]
        (tmp_path / name / "train_log.jsonl").write_text("\n".join(json.dumps(r) for r in log))
    out = tmp_path / "cmp.png"
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--labels", "plain", "peer", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit):
        main([str(tmp_path / "a"), str(tmp_path / "b"), "--labels", "only-one"])
    assert "one per run" in capsys.readouterr().err
