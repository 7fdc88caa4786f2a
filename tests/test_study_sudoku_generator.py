"""Sudoku generator and difficulty solver: committed sets checked by independent solvers, strategies by hand."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from studies.sudoku import generate as S

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tasks" / "sudoku" / "data"
UNITS = ([[r * 9 + c for c in range(9)] for r in range(9)] + [[r * 9 + c for r in range(9)] for c in range(9)]
         + [[(b // 3 * 3 + i // 3) * 9 + b % 3 * 3 + i % 3 for i in range(9)] for b in range(9)])
PEERS = [set().union(*(u for u in UNITS if i in u)) - {i} for i in range(81)]


def read(name: str) -> list[dict]:
    """Read a committed JSONL set."""
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]


# --- independent solvers (written separately from the generator's) ---------------------------------------------
def exact_cover_solutions(puzzle: str, limit: int = 2) -> int:
    """Count solutions (up to limit) with Knuth's Algorithm X on dict-of-sets (Ali Assaf's formulation)."""
    rows = {(r, c, n): [("rc", r, c), ("rn", r, n), ("cn", c, n), ("bn", r // 3 * 3 + c // 3, n)]
            for r in range(9) for c in range(9) for n in range(1, 10)}
    cols: dict = {}
    for key, cons in rows.items():
        for con in cons:
            cols.setdefault(con, set()).add(key)

    def select(row):
        removed = []
        for j in rows[row]:
            for i in cols[j]:
                for k in rows[i]:
                    if k != j:
                        cols[k].remove(i)
            removed.append(cols.pop(j))
        return removed

    def deselect(row, removed):
        for j in reversed(rows[row]):
            cols[j] = removed.pop()
            for i in cols[j]:
                for k in rows[i]:
                    if k != j:
                        cols[k].add(i)

    for i, ch in enumerate(puzzle):
        if ch != "0":
            key = (i // 9, i % 9, int(ch))
            if any(con not in cols for con in rows[key]):
                return 0
            select(key)

    def search() -> int:
        if not cols:
            return 1
        col = min(cols, key=lambda c: len(cols[c]))
        total = 0
        for row in list(cols[col]):
            removed = select(row)
            total += search()
            deselect(row, removed)
            if total >= limit:
                break
        return total

    return search()


def strategy_level(puzzle: str) -> str:
    """Rate a puzzle with a plain set-based solver: easy (singles), medium (+subsets, locked), else hard."""
    cand = [{int(ch)} if ch != "0" else set(range(1, 10)) for ch in puzzle]

    def singles() -> bool:
        changed = False
        for i in range(81):
            if len(cand[i]) == 1:
                for p in PEERS[i]:
                    if cand[i] & cand[p] and len(cand[p]) > 1:
                        cand[p] -= cand[i]
                        changed = True
        for unit, d in itertools.product(UNITS, range(1, 10)):
            where = [i for i in unit if d in cand[i]]
            if len(where) == 1 and len(cand[where[0]]) > 1:
                cand[where[0]] = {d}
                changed = True
        return changed

    def advanced() -> bool:
        changed = False
        for unit in UNITS:
            for k in (2, 3):
                for group in itertools.combinations([i for i in unit if len(cand[i]) > 1], k):
                    union = set().union(*(cand[i] for i in group))
                    if len(union) == k:
                        for i in set(unit) - set(group):
                            if cand[i] & union:
                                cand[i] -= union
                                changed = True
                open_digits = [d for d in range(1, 10) if sum(d in cand[i] for i in unit) > 1]
                for digits in itertools.combinations(open_digits, k):
                    cells = {i for i in unit if cand[i] & set(digits)}
                    if len(cells) == k:
                        for i in cells:
                            if cand[i] - set(digits):
                                cand[i] &= set(digits)
                                changed = True
        boxes, lines = UNITS[18:], UNITS[:18]
        for box, line, d in itertools.product(boxes, lines, range(1, 10)):
            inside = set(box) & set(line)
            in_box = {i for i in box if d in cand[i]}
            in_line = {i for i in line if d in cand[i]}
            for confined, other in ((in_box, set(line) - inside), (in_line, set(box) - inside)):
                if confined and confined <= inside:
                    for i in other:
                        if d in cand[i]:
                            cand[i].discard(d)
                            changed = True
        return changed

    def done() -> bool:
        return all(len(c) == 1 for c in cand)

    while singles():
        pass
    if done():
        return "easy"
    while singles() or advanced():
        pass
    return "medium" if done() else "hard"


def valid_solution(puzzle: str, solution: str) -> bool:
    """A full valid grid that keeps the puzzle's clues."""
    return (len(solution) == 81 and all(sorted(solution[i] for i in u) == list("123456789") for u in UNITS)
            and all(p in ("0", s) for p, s in zip(puzzle, solution)))


# --- the committed sets ------------------------------------------------------------------------------------------
def test_committed_sets_sizes_and_fields():
    easy, hard = read("test_easy.jsonl"), read("test_hard.jsonl")
    assert len(easy) >= 1000 and len(hard) >= 200
    assert {r["difficulty"] for r in easy} == {"easy", "medium"} and {r["difficulty"] for r in hard} == {"hard"}
    for r in easy + hard:
        assert set(r) == {"puzzle", "solution", "difficulty", "clues", "prompt", "response"}
        assert r["prompt"] == r["puzzle"] and r["response"] == r["solution"]
        assert r["clues"] == 81 - r["puzzle"].count("0")
        assert valid_solution(r["puzzle"], r["solution"])
    assert len({r["puzzle"] for r in easy + hard}) == len(easy) + len(hard)


def test_every_committed_puzzle_has_exactly_one_solution():
    for r in read("test_easy.jsonl") + read("test_hard.jsonl"):
        assert exact_cover_solutions(r["puzzle"]) == 1, r["puzzle"]


def test_committed_labels_match_an_independent_strategy_solver():
    for r in read("test_easy.jsonl") + read("test_hard.jsonl"):
        assert strategy_level(r["puzzle"]) == r["difficulty"], r["puzzle"]


# --- the vectorised strategies, one at a time ----------------------------------------------------------------
def full(*fixed: tuple[int, set[int]]) -> np.ndarray:
    """A candidate array [1, 81, 9] with every digit open except the given cells' sets."""
    cand = np.ones((1, 81, 9), dtype=bool)
    for cell, digits in fixed:
        cand[0, cell] = [d in digits for d in range(1, 10)]
    return cand


def digits_of(cand: np.ndarray, cell: int) -> set[int]:
    """The candidate digits of one cell."""
    return {d + 1 for d in np.flatnonzero(cand[0, cell])}


def test_naked_pair_and_triple_eliminate_from_the_rest_of_the_unit():
    out = S._subsets_step(full((0, {1, 2}), (1, {1, 2})))
    assert all(digits_of(out, i) == set(range(3, 10)) for i in range(2, 9))
    assert all(digits_of(out, i) == set(range(3, 10)) for i in (9, 10, 11, 18, 19, 20))  # the pair shares box 0
    assert digits_of(out, 27) == set(range(1, 10))  # column 0 below box 0: untouched
    out = S._subsets_step(full((4, {1, 2}), (13, {2, 3}), (76, {1, 3})))  # column 4 holds a naked triple
    assert all(digits_of(out, r * 9 + 4) == set(range(4, 10)) for r in range(2, 8))
    out = S._subsets_step(full((4, {1, 2}), (13, {2, 3}), (76, {1, 4})))  # four digits in three cells: nothing
    assert digits_of(out, 22) == set(range(1, 10))


def test_hidden_pair_keeps_only_the_pair_in_its_cells():
    cand = full(*[(i, set(range(1, 10)) - {3, 4}) for i in range(2, 9)])  # 3 and 4 fit only cells 0, 1 of row 0
    out = S._subsets_step(cand)
    assert digits_of(out, 0) == {3, 4} == digits_of(out, 1)


def test_pointing_and_claiming():
    no5 = set(range(1, 10)) - {5}
    out = S._subsets_step(full(*[(i, no5) for i in (9, 10, 11, 18, 19, 20)]))  # box 0 puts 5 in row 0
    assert all(5 not in digits_of(out, i) for i in range(3, 9)) and 5 in digits_of(out, 0)
    no6 = set(range(1, 10)) - {6}
    out = S._subsets_step(full(*[(i, no6) for i in range(3, 9)]))  # row 0 puts 6 in box 0
    assert all(6 not in digits_of(out, i) for i in (9, 10, 11, 18, 19, 20)) and 6 in digits_of(out, 27)
    out = S._subsets_step(full(*[(i * 9, no6) for i in range(3, 9)]))  # column 0 puts 6 in box 0
    assert all(6 not in digits_of(out, i) for i in (1, 2, 10, 11, 19, 20))


def test_singles_step_places_naked_and_hidden_singles():
    out = S._singles_step(full((0, {7})))
    assert all(7 not in digits_of(out, p) for p in PEERS[0]) and digits_of(out, 80) == set(range(1, 10))
    out = S._singles_step(full(*[(i, set(range(1, 9))) for i in range(1, 9)]))  # 9 fits only cell 0 of row 0
    assert digits_of(out, 0) == {9}


# --- generation ----------------------------------------------------------------------------------------------
def test_random_grids_are_valid_and_distinct():
    grids = S.random_grids(64, np.random.default_rng(3))
    assert all(valid_solution("0" * 81, g) for g in S.to_strings(grids))
    assert len({g.tobytes() for g in grids}) == 64


@pytest.mark.parametrize("difficulty", ["easy", "medium", "hard"])
def test_generate_chunk_gives_unique_puzzles_of_the_asked_difficulty(difficulty):
    recs = S.generate_chunk(4, seed=5, difficulties=difficulty, batch=16)
    assert len(recs) == 4 and {r["difficulty"] for r in recs} == {difficulty}
    for r in recs:
        assert valid_solution(r["puzzle"], r["solution"]) and exact_cover_solutions(r["puzzle"]) == 1
        assert strategy_level(r["puzzle"]) == difficulty


def test_generate_is_seeded_extends_and_honours_exclude():
    a = list(S.generate(6, seed=2, chunk=4))
    assert a == list(S.generate(6, seed=2, chunk=4)) and a != list(S.generate(6, seed=3, chunk=4))
    assert list(S.generate(3, seed=2, chunk=4)) == a[:3]  # a longer run extends a shorter one
    b = list(S.generate(6, seed=2, chunk=4, exclude={a[0]["puzzle"], a[5]["puzzle"]}))
    assert len(b) == 6 and b[:4] == a[1:5] and a[0] not in b and a[5] not in b


def test_min_clues_stops_removal():
    recs = S.generate_chunk(8, seed=1, difficulties="easy", min_clues=40, batch=8)
    assert all(r["clues"] >= 40 for r in recs)


def test_cli_writes_jsonl(tmp_path):
    out = tmp_path / "p.jsonl"
    proc = subprocess.run([sys.executable, "-m", "studies.sudoku.generate", "--n", "5", "--out", str(out),
                           "--seed", "1", "--difficulty", "easy,medium", "--chunk", "5", "--workers", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == 5 and "puzzles/s" in proc.stderr
    assert recs == list(S.generate(5, seed=1, chunk=5))
    bad = subprocess.run([sys.executable, "-m", "studies.sudoku.generate", "--n", "1", "--out", str(out),
                          "--difficulty", "expert"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "unknown difficulty" in bad.stderr


def test_bad_input_gives_clear_errors():
    with pytest.raises(ValueError, match="81 digits"):
        S.rate(["123"])
    with pytest.raises(ValueError, match="81 digits"):
        S.rate(["x" * 81])
    with pytest.raises(ValueError, match="81 digits"):
        S.count_solutions("1" * 80)
    with pytest.raises(ValueError, match="unknown difficulty"):
        S.generate_chunk(1, 0, "expert")


def test_rate_and_count_agree_with_known_puzzles():
    easy = "530070000600195000098000060800060003400803001700020006060000280000419005000080079"
    assert S.rate([easy]) == ["easy"] and S.count_solutions(easy) == 1
    assert S.count_solutions("0" * 81) == 2 and S.count_solutions("11" + "0" * 79) == 0


# --- 4x4 boards (size=4) and 9x9 output unchanged by the size option -------------------------------------------
UNITS4 = ([[r * 4 + c for c in range(4)] for r in range(4)] + [[r * 4 + c for r in range(4)] for c in range(4)]
          + [[(b // 2 * 2 + i // 2) * 4 + b % 2 * 2 + i % 2 for i in range(4)] for b in range(4)])
_ROWS4 = ["".join(map(str, p)) for p in itertools.permutations(range(1, 5))]
ALL_GRIDS4 = [g for g in map("".join, itertools.product(_ROWS4, repeat=4))
              if all(len({g[i] for i in u}) == 4 for u in UNITS4)]  # brute force, independent of the generator


def test_there_are_288_4x4_grids():
    assert len(ALL_GRIDS4) == 288


def test_4x4_puzzles_are_unique_minimal_and_match_brute_force():
    recs = list(S.generate(40, seed=3, difficulties="easy,hard", size=4, chunk=40))
    assert len(recs) == 40 and all(len(r["puzzle"]) == 16 and r["difficulty"] == "easy" for r in recs)
    for r in recs:
        fits = [g for g in ALL_GRIDS4 if all(p in ("0", c) for p, c in zip(r["puzzle"], g))]
        assert fits == [r["solution"]] and S.count_solutions(r["puzzle"]) == 1
        assert r["clues"] == 16 - r["puzzle"].count("0") and 4 <= r["clues"] <= 7
        for i in [i for i, p in enumerate(r["puzzle"]) if p != "0"]:  # minimal: no clue can go
            assert S.count_solutions(r["puzzle"][:i] + "0" + r["puzzle"][i + 1:]) == 2
    easy = list(S.generate(40, seed=3, difficulties="easy", size=4, chunk=40))
    assert all(S.rate([r["puzzle"]]) == ["easy"] for r in easy)
    assert {r["solution"] for r in recs} <= set(ALL_GRIDS4)


def test_4x4_grids_and_errors():
    grids = S.random_grids(32, np.random.default_rng(0), size=4)
    assert grids.shape == (32, 16) and set(S.to_strings(grids)) <= set(ALL_GRIDS4)
    with pytest.raises(ValueError, match="singles"):
        list(S.generate(1, size=4, difficulties="hard"))
    with pytest.raises(ValueError, match="size"):
        list(S.generate(1, size=6))
    with pytest.raises(ValueError, match="16 digits"):
        S.rate(["1" * 16, "1234"])  # the first grid sets the size


def test_cli_size_4(tmp_path):
    out = tmp_path / "p4.jsonl"
    proc = subprocess.run([sys.executable, "-m", "studies.sudoku.generate", "--n", "5", "--out", str(out), "--size", "4",
                           "--difficulty", "easy"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert recs == list(S.generate(5, size=4, difficulties="easy"))


@pytest.mark.slow
def test_committed_9x9_set_still_regenerates():
    """The size option leaves 9x9 output alone: the README command reproduces the committed set's start."""
    assert list(S.generate(3, seed=20261, difficulties="easy,medium")) == read("test_easy.jsonl")[:3]


# --- symmetric variants (augment) ----------------------------------------------------------------------------------
def test_augmented_variants_are_valid_unique_and_rated_alike():
    recs = read("test_easy.jsonl")[:20] + read("test_hard.jsonl")[:6]
    puzzles = S.as_grids([r["puzzle"] for r in recs])
    solutions = S.as_grids([r["solution"] for r in recs])
    p, s = S.augment(puzzles, solutions, np.random.default_rng(0))
    for rec, vp, vs in zip(recs, S.to_strings(p), S.to_strings(s)):
        assert all(len({vs[i] for i in u}) == 9 for u in UNITS) and "0" not in vs  # a complete grid
        assert all(a in ("0", b) for a, b in zip(vp, vs)) and vp.count("0") == rec["puzzle"].count("0")
        assert vp != rec["puzzle"] and exact_cover_solutions(vp) == 1  # independent solver: one solution
    assert S.rate(p) == [r["difficulty"] for r in recs]  # the same human strategies apply
    with pytest.raises(ValueError, match="one shape"):
        S.augment(puzzles, solutions[:3], np.random.default_rng(0))


def test_augment_reaches_the_whole_symmetry_class():
    """There are two essentially different 4x4 grids (classes of 96 and 192): augment reaches all of each class."""
    reached = []
    for start in ALL_GRIDS4[:2]:
        grid = S.as_grids([start] * 8000)
        _, s = S.augment(grid, grid, np.random.default_rng(1))
        reached.append(set(S.to_strings(s)))
    assert sorted(map(len, reached)) == [96, 192] and reached[0] | reached[1] == set(ALL_GRIDS4)


def test_cli_augments_a_file(tmp_path):
    src, out = tmp_path / "src.jsonl", tmp_path / "aug.jsonl"
    recs = read("test_easy.jsonl")[:4]
    src.write_text("".join(json.dumps({"puzzle": r["puzzle"], "solution": r["solution"]}) + "\n" for r in recs))
    exclude = tmp_path / "exclude.jsonl"
    exclude.write_text(json.dumps(recs[1]) + "\n")
    proc = subprocess.run([sys.executable, "-m", "studies.sudoku.generate", "--from", str(src), "--augment", "3",
                           "--seed", "5", "--out", str(out), "--exclude", str(exclude)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(got) == 9 and [g["puzzle"] for g in got[::3]] == [recs[i]["puzzle"] for i in (0, 2, 3)]
    assert all(g["difficulty"] == recs[0]["difficulty"] and g["prompt"] == g["puzzle"] for g in got[:3])
    assert len({g["puzzle"] for g in got}) == 9
    assert subprocess.run([sys.executable, "-m", "studies.sudoku.generate", "--from", str(src), "--augment", "3",
                           "--seed", "5", "--out", str(tmp_path / "again.jsonl"), "--exclude", str(exclude)],
                          cwd=ROOT, timeout=120).returncode == 0
    assert (tmp_path / "again.jsonl").read_text() == out.read_text()  # seeded
    src.write_text('{"puzzle": "123"}\n')
    bad = subprocess.run([sys.executable, "-m", "studies.sudoku.generate", "--from", str(src), "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "'puzzle' and 'solution'" in bad.stderr
    none = subprocess.run([sys.executable, "-m", "studies.sudoku.generate", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert none.returncode != 0 and "--n" in none.stderr
