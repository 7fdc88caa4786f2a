"""`python -m emdm_eval.ablation`: a tiny grid through lm-eval, its CSV/Markdown/PNG, resuming, the table writer."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from emdm_core.stats import holm, paired_counts
from emdm_eval import ablation as A
from emdm_eval import paired as P

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
GRID = ["--tasks", "sudoku_easy", "--samplers", "vanilla", "margin", "--steps", "2", "4", "--option",
        "threshold=0.9", "--limit", "4", "--batch-size", "4", "--threads", "1"]
EXPECTED = {("vanilla", "2", ""), ("vanilla", "4", ""), ("vanilla", "4", "threshold=0.9"),
            ("margin", "2", ""), ("margin", "4", ""), ("margin", "4", "threshold=0.9")}


@pytest.fixture(scope="module")
def sudoku_ckpt(tmp_path_factory) -> str:
    from emdm_models.architectures import save_sudoku_model_dir

    path = tmp_path_factory.mktemp("abl") / "tiny-sudoku"
    return str(save_sudoku_model_dir(path, "cpu", num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                                     intermediate_size=64))


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_cli_runs_the_grid_writes_reports_and_resumes(sudoku_ckpt, tmp_path, capsys):
    out = tmp_path / "abl"
    proc = subprocess.run([sys.executable, "-m", "emdm_eval.ablation", "--pretrained", sudoku_ckpt, *GRID,
                           "--out", str(out)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ablation grid" in proc.stderr and "6 new, 0 cached" in proc.stdout

    rows = read_csv(out / A.CSV_NAME)
    assert {(r["sampler"], r["steps"], r["options"]) for r in rows} == EXPECTED and len(rows) == 6
    for r in rows:
        assert r["tasks"] == "sudoku_easy" and r["limit"] == "4" and r["docs"] == "4"
        assert 0.0 <= float(r["sudoku_easy/solved"]) <= 1.0 and 0.0 <= float(r["sudoku_easy/cell_acc"]) <= 1.0
        assert float(r["sudoku_easy/cell_acc_stderr"]) >= 0.0
        assert float(r["seconds"]) > 0 and float(r["docs_per_s"]) > 0
        if not r["options"]:  # one cell batch per step: every puzzle takes exactly `steps` passes
            assert float(r["passes_per_doc"]) == float(r["steps"]) and int(r["forward_passes"]) == int(r["steps"])
        else:
            assert 1 <= float(r["passes_per_doc"]) <= 81

    text = (out / A.MD_NAME).read_text()
    md = text.split("\n\n")[0].splitlines()
    assert md[0].startswith("| sampler | steps | options | solved | cell_acc | forward passes |") and len(md) == 8
    assert all(line.count("|") == md[0].count("|") for line in md) and " ± " in md[2]

    # per-document outcomes and the paired comparison of the two samplers at each setting
    outcomes = [json.loads(line) for line in (out / P.OUTCOMES_NAME).read_text().splitlines()]
    assert len(outcomes) == 6 * 4 and {o["doc_id"] for o in outcomes} == {0, 1, 2, 3}
    assert all(o["task"] == "sudoku_easy" and o["solved"] in (0, 1) for o in outcomes)
    pairs = [r for r in read_csv(out / P.PAIRED_NAME) if r["metric"] == "solved"]
    assert {(r["a_sampler"], r["b_sampler"], r["a_steps"], r["a_options"]) for r in pairs} == {
        ("vanilla", "margin", "2", ""), ("vanilla", "margin", "4", ""), ("vanilla", "margin", "4", "threshold=0.9")}
    for r in pairs:
        solved = {(o["sampler"], o["steps"], o["options"], o["doc_id"]): o["solved"] for o in outcomes}
        a = [solved[(r["a_sampler"], int(r["a_steps"]), r["a_options"], d)] for d in range(4)]
        b = [solved[(r["b_sampler"], int(r["b_steps"]), r["b_options"], d)] for d in range(4)]
        counts = paired_counts(a, b)
        assert (int(r["both"]), int(r["only_a"]), int(r["only_b"]), int(r["neither"])) == \
            (counts.both, counts.only_a, counts.only_b, counts.neither)
        assert float(r["p_value"]) == pytest.approx(counts.p_value)
    family = read_csv(out / P.PAIRED_NAME)  # Holm over every comparison reported
    assert [float(r["p_holm"]) for r in family] == pytest.approx(holm([float(r["p_value"]) for r in family]))
    assert "## Paired comparisons (same documents)" in text and "Holm p |" in text and "| sudoku_easy | solved | 4 | threshold=0.9 |" in text
    png = (out / A.PNG_NAME).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000

    # resume: an interrupted run lost its last two rows; only those are recomputed, with the same numbers
    header, *lines = (out / A.CSV_NAME).read_text().splitlines()
    (out / A.CSV_NAME).write_text("\n".join([header, *lines[:4]]) + "\n")
    threads = torch.get_num_threads()
    try:
        assert A.main(["--pretrained", sudoku_ckpt, *GRID, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    assert "2 new, 4 cached" in capsys.readouterr().out
    assert read_csv(out / P.PAIRED_NAME) == read_csv(out / P.PAIRED_NAME) and \
        {r["n"] for r in read_csv(out / P.PAIRED_NAME)} == {"4"}  # re-run points replace their outcomes
    again = read_csv(out / A.CSV_NAME)
    drop = ("seconds", "docs_per_s", "wall_seconds")
    assert [{k: v for k, v in r.items() if k not in drop} for r in again] == \
        [{k: v for k, v in r.items() if k not in drop} for r in rows]
    assert A.main(["--pretrained", sudoku_ckpt, *GRID, "--out", str(out), "--metric", "cell_acc"]) == 0
    assert "0 new, 6 cached" in capsys.readouterr().out  # everything cached: nothing is loaded

    # another grid in the same folder: the CSV keeps every row, the Markdown and the plot show this grid only
    small = ["--tasks", "sudoku_easy", "--samplers", "margin", "--steps", "2", "--limit", "2", "--threads", "1"]
    assert A.main(["--pretrained", sudoku_ckpt, *small, "--out", str(out)]) == 0
    assert len(read_csv(out / A.CSV_NAME)) == 7 and len((out / A.MD_NAME).read_text().split("\n\n")[0].splitlines()) == 3
    assert read_csv(out / P.PAIRED_NAME) == []  # one sampler: nothing to pair


def test_bad_input_is_one_line(sudoku_ckpt, tmp_path, capsys):
    assert A.main(["--pretrained", sudoku_ckpt, "--tasks", "sudoku_easy", "--samplers", "nonsense",
                   "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: unknown sampler 'nonsense'; registered samplers:")
    assert A.main(["--pretrained", sudoku_ckpt, "--tasks", "sudoku_easy", "--option", "threshold", "--out",
                   str(tmp_path)]) == 2
    assert "expected key=value" in capsys.readouterr().err
    assert A.main(["--pretrained", str(tmp_path / "missing"), "--tasks", "sudoku_easy", "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_build_grid_runs_threshold_sets_once_per_sampler():
    grid = A.build_grid(["vanilla", "margin"], [10, 50, 27], [{"threshold": "0.9"}, {"temperature": "0.5"}])
    assert [(p.sampler, p.steps, p.options_text) for p in grid if p.sampler == "margin"] == [
        ("margin", 10, ""), ("margin", 50, ""), ("margin", 27, ""), ("margin", 50, "threshold=0.9"),
        ("margin", 10, "temperature=0.5"), ("margin", 50, "temperature=0.5"), ("margin", 27, "temperature=0.5")]
    assert len(A.build_grid(["margin"], [4], [{}], baseline=True)) == 1  # duplicates are dropped
    assert A.build_grid(["margin"], [4], [{"threshold": "0.7"}], baseline=False)[0].sampler_kwargs() == \
        {"sampler": "margin", "steps": 4, "threshold": "0.7"}


def test_flatten_results_and_costs():
    results = {"results": {"b": {"alias": "b", "acc,none": 0.5, "acc_stderr,none": 0.1},
                           "a": {"alias": "a", "solved,none": 0.25, "solved_stderr,none": "N/A",
                                 "cell_acc,none": 0.75, "cell_acc_stderr,none": 0.05}},
               "n-samples": {"a": {"original": 10, "effective": 4}, "b": {"original": 4, "effective": 4}},
               "config": {"emdm": {"stats": {"generate_until": {"forward_passes": 20, "row_forward_passes": 80,
                                                                "seconds": 2.0}}}}}
    flat = A.flatten_results(results, ["a", "b"])
    assert list(flat) == ["a/solved", "a/solved_stderr", "a/cell_acc", "a/cell_acc_stderr", "b/acc", "b/acc_stderr"]
    assert flat["a/solved_stderr"] is None and flat["b/acc"] == 0.5
    cost = A.cost_columns(results, 3.0)
    assert cost["docs"] == 8 and cost["forward_passes"] == 20 and cost["passes_per_doc"] == 10.0
    assert cost["docs_per_s"] == 4.0


def test_markdown_table_writer():
    rows = [{"sampler": "margin", "steps": 50, "options": "", "t/solved": 0.5, "t/solved_stderr": 0.05,
             "t/cell_acc": 0.9, "t/cell_acc_stderr": None, "forward_passes": 150, "passes_per_doc": 50.0,
             "seconds": 12.345, "docs_per_s": 8.1},
            {"sampler": "vanilla", "steps": 50, "options": "threshold=0.9", "t/solved": "0.25",
             "t/solved_stderr": "0.0433", "t/cell_acc": "", "forward_passes": "30", "passes_per_doc": "",
             "seconds": "1.0", "docs_per_s": "3"}]
    table = A.markdown_table(rows)
    assert table.splitlines() == [
        "| sampler | steps | options | solved | cell_acc | forward passes | passes/doc | seconds | docs/s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
        "| margin | 50 | - | 0.5000 ± 0.0500 | 0.9000 | 150 | 50.0 | 12.3 | 8.10 |",
        "| vanilla | 50 | threshold=0.9 | 0.2500 ± 0.0433 | - | 30 | - | 1.0 | 3.00 |", "", A.TIME_NOTE]
    assert "machine load included" in A.TIME_NOTE  # the seconds say what they are
    two = A.markdown_table([{**rows[0], "u/acc": 1.0}])
    assert "| t/solved | t/cell_acc | u/acc |" in two  # several tasks: the headers keep the task name


def test_paired_rows_pair_samplers_at_the_same_setting_on_common_documents():
    base = {"pretrained": "m", "tasks": "t", "limit": "", "seed": 1, "model_args": ""}
    points = [{**base, "sampler": s, "steps": 50, "options": o} for o in ("", "order_noise=0.5")
              for s in ("vanilla", "top_prob", "margin")]
    solved = {"vanilla": [0, 0, 1, 0, 0], "top_prob": [1, 0, 1, 0, 1], "margin": [1, 1, 1, 1, 0]}
    outcomes = {P.point_key(p): {"t": {d: {"solved": float(v), "cell_acc": 0.5} for d, v in
                                       enumerate(solved[p["sampler"]])}} for p in points}
    del outcomes[P.point_key(points[5])]["t"][4]  # margin with noise lost its last document
    rows = P.paired_rows(points, outcomes)
    assert [(r["a_sampler"], r["b_sampler"], r["a_options"]) for r in rows] == [
        ("vanilla", "top_prob", ""), ("vanilla", "margin", ""), ("top_prob", "margin", ""),
        ("vanilla", "top_prob", "order_noise=0.5"), ("vanilla", "margin", "order_noise=0.5"),
        ("top_prob", "margin", "order_noise=0.5")]
    assert all(r["metric"] == "solved" for r in rows)  # cell_acc is not a 0/1 outcome
    top_vs_margin = rows[2]
    assert (top_vs_margin["both"], top_vs_margin["only_a"], top_vs_margin["only_b"], top_vs_margin["neither"]) == \
        (2, 1, 2, 0)
    assert top_vs_margin["p_value"] == 1.0 and top_vs_margin["diff"] == pytest.approx(-0.2)
    assert rows[5]["n"] == 4  # only the documents both points scored
    assert len(P.paired_rows(points, outcomes, all_pairs=True)) == 15  # every two of the six points
    md = P.paired_markdown(rows).splitlines()
    assert md[0] == "## Paired comparisons (same documents)" and len(md) == 6 + len(rows) and "Holm" in md[2]
    assert md[8] == ("| t | solved | 50 | - | top_prob | margin | 5 | 2 | 1 | 2 | 0 | -0.200 [-0.856, +0.456] | 1.000 | "
                     "1.000 |")


def test_ablation_help_has_no_blank_entries():
    blank = [a.option_strings for a in A.build_parser()._actions if a.option_strings and not a.help]
    assert not blank, blank
