"""The lm-eval Sudoku tasks: metric on hand-made generations, data loading from any directory, YAML loading."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

TASK_DIR = Path(__file__).resolve().parents[1] / "tasks" / "sudoku"
PUZZLE = "530070000600195000098000060800060003400803001700020006060000280000419005000080079"
SOLUTION = "534678912672195348198342567859761423426853791713924856961537284287419635345286179"
BLANKS = PUZZLE.count("0")


def load_utils():
    """Import tasks/sudoku/utils.py by path, as lm-eval does."""
    spec = importlib.util.spec_from_file_location("sudoku_task_utils", TASK_DIR / "utils.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


U = load_utils()


def swap(grid: str, i: int, j: int) -> str:
    """Swap two cells of a grid string."""
    g = list(grid)
    g[i], g[j] = g[j], g[i]
    return "".join(g)


def relabel(grid: str, a: str, b: str) -> str:
    """Exchange digits a and b everywhere: still a valid grid, but it breaks clues holding a or b."""
    return grid.translate(str.maketrans(a + b, b + a))


@pytest.mark.parametrize("generation, solved, cell_acc", [
    (SOLUTION, 1.0, 1.0),
    (" " + " ".join(SOLUTION) + "\n", 1.0, 1.0),  # whitespace anywhere is ignored
    ("\n".join(SOLUTION[i:i + 9] for i in range(0, 81, 9)), 1.0, 1.0),  # printed as nine rows
    (SOLUTION + "[EOS]", 1.0, 1.0),  # trailing non-digit text is ignored
    (SOLUTION + " is the answer.", 1.0, 1.0),
    (SOLUTION + "7", 0.0, 1.0),  # 82 digits: not an 81-digit grid (cells read from the first 81)
    ("Answer: " + SOLUTION, 0.0, 0.0),  # text before the grid leaves the answer empty
    (SOLUTION[:80], 0.0, 1.0),  # too short: not solved (the missing cell 80 is a clue, so cell_acc is whole)
    (SOLUTION[:78], 0.0, (BLANKS - 1) / BLANKS),  # cells 78-80 missing: blank 78 counts as wrong
    ("", 0.0, 0.0),
    (PUZZLE, 0.0, 0.0),  # blanks left as 0
    (relabel(SOLUTION, "1", "2"), 0.0, None),  # a valid grid that breaks clues
])
def test_score_hand_made_cases(generation, solved, cell_acc):
    out = U.score(PUZZLE, SOLUTION, generation)
    assert out["solved"] == solved
    if cell_acc is not None:
        assert out["cell_acc"] == pytest.approx(cell_acc)


def test_score_duplicates_and_bad_digits():
    blank = [i for i, p in enumerate(PUZZLE) if p == "0"]
    row_dup = SOLUTION[:blank[0]] + SOLUTION[blank[1]] + SOLUTION[blank[0] + 1:]  # blank 0 gets blank 1's digit
    assert U.score(PUZZLE, SOLUTION, row_dup) == {"solved": 0.0, "cell_acc": pytest.approx((BLANKS - 1) / BLANKS)}
    # swap two blank cells of the same row in different boxes: rows still fine, columns and boxes broken
    a, b = 2, 3  # row 0: cells 2 and 3 are blanks in boxes 0 and 1
    assert PUZZLE[a] == PUZZLE[b] == "0"
    assert U.score(PUZZLE, SOLUTION, swap(SOLUTION, a, b))["solved"] == 0.0
    zero = SOLUTION[:2] + "0" + SOLUTION[3:]  # a 0 left in a blank
    assert U.score(PUZZLE, SOLUTION, zero) == {"solved": 0.0, "cell_acc": pytest.approx((BLANKS - 1) / BLANKS)}


def test_any_valid_completion_counts():
    # with no clues every valid grid is a completion: solved, though cell_acc compares with the reference
    other = relabel(SOLUTION, "1", "2")
    out = U.score("0" * 81, SOLUTION, other)
    assert out["solved"] == 1.0 and out["cell_acc"] == pytest.approx(1 - 18 / 81)


def test_is_valid_completion_checks_each_unit():
    assert U.is_valid_completion(PUZZLE, SOLUTION)
    rows_swapped = SOLUTION[9:18] + SOLUTION[:9] + SOLUTION[18:]  # valid grid, breaks the clues of rows 0-1
    assert not U.is_valid_completion(PUZZLE, rows_swapped)
    assert U.is_valid_completion("0" * 81, rows_swapped)
    bands_mixed = SOLUTION[27:36] + SOLUTION[9:27] + SOLUTION[:9] + SOLUTION[36:]  # rows 0 and 3 swapped: boxes break
    assert not U.is_valid_completion("0" * 81, bands_mixed)


def test_is_valid_completion_takes_4x4_boards():
    grid = "1234341221434321"
    assert U.is_valid_completion("1000000000000000", grid)
    assert not U.is_valid_completion("2000000000000000", grid)  # a clue not kept
    assert not U.is_valid_completion("0" * 16, "1234341221434312")  # the last two cells swapped: columns break
    assert not U.is_valid_completion("0" * 16, "1234341221434325")  # a 5 on a 4x4 board
    assert not U.is_valid_completion("0" * 16, grid + "1")  # 17 digits


def test_load_dataset_from_another_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ds = load_utils().load_dataset(data_file="test_hard.jsonl", version=1.0)["test"]
    assert len(ds) >= 200 and set(ds.column_names) == {"puzzle", "solution", "difficulty", "clues"}
    with pytest.raises(FileNotFoundError, match="README"):
        U.load_dataset(data_file="nope.jsonl")


def test_yaml_tasks_load_through_task_manager(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(TASK_DIR))
    assert {"sudoku_easy", "sudoku_hard", "sudoku"} <= set(tm.all_tasks)
    loaded = tm.load(["sudoku"])
    assert loaded["group_map"]["sudoku"] == ["sudoku_easy", "sudoku_hard"]
    easy, hard = loaded["tasks"]["sudoku_easy"], loaded["tasks"]["sudoku_hard"]
    docs = list(easy.test_docs())
    assert len(docs) >= 1000 and len(list(hard.test_docs())) >= 200
    assert easy.doc_to_text(docs[0]) == docs[0]["puzzle"]
    assert easy.config.generation_kwargs == {"until": [], "max_gen_toks": 81, "do_sample": False}
    easy.build_all_requests(limit=2, rank=0, world_size=1)
    req = easy.instances[0]
    assert req.args[0] == docs[0]["puzzle"]
    assert easy.process_results(docs[0], [docs[0]["solution"]]) == {"solved": 1.0, "cell_acc": 1.0}
