"""The addition task behind `emdm:addition`: its generator (seeded, held out up to commutation) and its scorer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from studies.addition import generate as G

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tasks" / "addition"))
import utils as addition_utils  # noqa: E402  (the lm-eval task's helpers)

sys.path.remove(str(ROOT / "tasks" / "addition"))
sys.modules.pop("utils", None)


def test_rows_are_sums_with_fixed_widths_and_a_seed_fixes_the_draw():
    rows = list(G.draw(50, seed=3, digits=8))
    assert rows == list(G.draw(50, seed=3, digits=8))
    assert rows != list(G.draw(50, seed=4, digits=8))
    for row in rows:
        a, b = row["prompt"].rstrip("=").split("+")
        assert (a, b) == (row["a"], row["b"]) and len(a) == len(b) == 8
        assert len(row["response"]) == 9 and int(row["response"]) == int(a) + int(b)
    assert len({G.canonical(r["a"], r["b"]) for r in rows}) == 50  # no repeats, not even a+b beside b+a


def test_exclusion_holds_up_to_commutation(tmp_path):
    """A held-out set leaves out every problem of the other files as `a+b` and as `b+a` (addition's one symmetry):
    with 2-digit operands (5,050 problems) a draw of 4,000 must meet the excluded ones if the check were missing."""
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps(G.problem(r["b"], r["a"])) + "\n" for r in G.draw(200, seed=1, digits=2)))
    forms = G.read_canonical([held])
    assert len(forms) == 200
    fresh = {G.canonical(r["a"], r["b"]) for r in G.draw(4000, seed=9, digits=2, exclude=forms)}
    assert len(fresh) == 4000 and not fresh & forms


def test_generator_cli_and_bad_input(tmp_path):
    out = tmp_path / "t.jsonl"
    env = {"PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "studies.addition.generate", "--n", "5", "--seed", "1", "--out",
                          str(out)], capture_output=True, text=True, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == list(G.draw(5, seed=1))  # the default task: 32-digit operands
    assert len(rows[0]["prompt"]) == 66 and len(rows[0]["response"]) == 33
    bad = subprocess.run([sys.executable, "-m", "studies.addition.generate", "--n", "5", "--seed", "1", "--out",
                          str(out), "--exclude", str(tmp_path / "missing.jsonl")], capture_output=True, text=True,
                         env=env, cwd=ROOT)
    assert bad.returncode != 0 and bad.stderr.strip().count("\n") == 0 and "missing.jsonl" in bad.stderr


def test_more_distinct_problems_than_exist_is_an_error_not_a_hang():
    with pytest.raises(G.ConfigError, match="distinct"):
        list(G.draw(56, seed=0, digits=1))


@pytest.mark.parametrize("generation, exact, digits", [
    ("0123", 1.0, 1.0), (" 01 23 [EOS]", 1.0, 1.0), ("0124", 0.0, 0.75), ("012", 0.0, 0.75), ("x0123", 0.0, 0.0),
    ("01234", 0.0, 1.0)])
def test_scoring_rule(generation, exact, digits):
    assert addition_utils.score("0123", generation) == {"exact_match": exact, "digit_acc": digits}


def test_sparse_rows_give_a_first_order_signal_and_the_default_draw_is_unchanged():
    """Training sets zero some rows' digits at a random rate (a sum digit then reveals the other operand's digit);
    the default (test sets) is the uniform draw, unchanged by the option's existence."""
    plain = list(G.draw(400, seed=5, digits=16))
    sparse = list(G.draw(400, seed=5, digits=16, sparse_fraction=0.5))
    zeros = lambda rows: sum((r["a"] + r["b"]).count("0") for r in rows) / (32 * len(rows))  # noqa: E731
    assert 0.08 < zeros(plain) < 0.12 and zeros(sparse) > 0.25
    assert all(int(r["response"]) == int(r["a"]) + int(r["b"]) for r in sparse)
    with pytest.raises(G.ConfigError, match="sparse-fraction"):
        list(G.draw(5, seed=0, sparse_fraction=1.5))


def test_carry_chains_make_a_run_of_nines_fed_by_the_place_below():
    """`--carry-chains LO,HI` (the addition_32_chains test set): every problem has >= LO consecutive places with
    a_k + b_k = 9, so its sum digits there are all 0 (a carry arrives) or all 9 (none), decided below the run."""
    rows = list(G.draw(200, seed=7, digits=32, chains=(8, 24)))
    carried = 0
    for r in rows:
        sums = [int(x) + int(y) for x, y in zip(r["a"], r["b"])]
        run = best = 0
        for v in sums:
            run = run + 1 if v == 9 else 0
            best = max(best, run)
        assert best >= 8 and int(r["response"]) == int(r["a"]) + int(r["b"])
        carried += "00000000" in r["response"][1:]
    assert 60 < carried < 140  # about half the chains receive a carry
    with pytest.raises(G.ConfigError, match="carry-chains"):
        list(G.draw(1, seed=0, digits=8, chains=(4, 9)))
