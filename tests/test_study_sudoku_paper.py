"""`python -m studies.sudoku.paper_setting`: the gate, the decoder grid with its paired tests, and the report."""

from __future__ import annotations

import csv
import json

import pytest

from studies.sudoku import paper_setting as PS

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_a_model_that_learned_passes_the_gate_and_gets_the_grid_and_report(tmp_path):
    out = tmp_path / "res"
    assert PS.main(["evaluate", "--model", "emdm:sudoku", "--out", str(out), "--limit", "3", "--threads", "1"]) == 0
    gate = json.loads((out / "gate.json").read_text())
    assert gate["passed"] and gate["gate_puzzles"] == 200 and gate["gate_solved"] >= 0.5
    rows = list(csv.DictReader((out / "grid" / "results.csv").open()))
    assert {(r["sampler"], r["options"]) for r in rows} == {(s, o) for s in PS.SAMPLERS for o in PS.DECODERS}
    assert all(r["steps"] == "50" and r["docs"] == "6" for r in rows)
    paired = list(csv.DictReader((out / "grid" / "paired.csv").open()))
    assert len([r for r in paired if r["metric"] == "solved"]) == 3 * 3 * 2  # 3 sampler pairs x 3 decoders x 2 tasks
    outcomes = (out / "grid" / "outcomes.jsonl").read_text().splitlines()
    assert len(outcomes) == 9 * 6

    md = tmp_path / "report.md"
    md.write_text("# Report\n\nintro\n\n<!-- paper-setting results: begin -->\nSTALE-RESULTS\n<!-- paper-setting results: end -->"
                  "\n\nafter\n")
    assert PS.main(["report", "--results", str(out), "--out", str(md)]) == 0
    text = md.read_text()
    assert text.startswith("# Report\n\nintro\n") and text.endswith("\n\nafter\n") and "STALE-RESULTS" not in text
    assert "passed, the grid below was run" in text
    assert "| paper noise + re-masking top-k (Ye et al.) | margin |" in text
    top_vs_margin = [r for r in paired if r["a_sampler"] == "top_prob" and r["b_sampler"] == "margin"
                     and r["task"] == "sudoku_easy" and r["a_options"] == "" and r["metric"] == "solved"][0]
    assert (f"| sudoku_easy | no noise | top_prob | margin | {top_vs_margin['both']} | {top_vs_margin['only_a']} | "
            f"{top_vs_margin['only_b']} | {top_vs_margin['neither']} |") in text


def test_a_model_that_did_not_learn_stops_at_the_gate(tmp_path):
    from emdm_models.architectures.sudoku import save_sudoku_encoder_dir

    model = save_sudoku_encoder_dir(tmp_path / "random", "bert", "cpu", hidden_size=16, intermediate_size=32,
                                    num_hidden_layers=1, num_attention_heads=2)
    out = tmp_path / "res"
    assert PS.main(["evaluate", "--model", str(model), "--out", str(out), "--threads", "1"]) == 0
    assert json.loads((out / "gate.json").read_text())["passed"] is False and not (out / "grid").exists()
    md = tmp_path / "report.md"
    assert PS.main(["report", "--results", str(out), "--out", str(md)]) == 0
    assert "did not learn at this budget" in md.read_text()
