"""lm-eval helpers for the Sudoku tasks: load the committed JSONL sets and score generated grids.

Scoring rule for a generation (documented in README.md):
1. all whitespace is removed (a grid printed with spaces or newlines reads the same);
2. the answer is the leading run of digits; text after it (an end marker, an explanation) is ignored,
   text before it leaves the answer empty;
3. `solved` = 1 when the run has exactly 81 digits, every row, column and box holds 1-9 once, and every clue
   of the puzzle is kept (any valid completion counts, not only the reference solution);
4. `cell_acc` = the share of the puzzle's blank cells whose answer digit equals the reference solution
   (cells past the end of a short answer count as wrong; a run longer than 81 is read up to 81).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent / "data"
_LEADING_DIGITS = re.compile(r"[0-9]*")
_WHITESPACE = re.compile(r"\s+")


def _units(side: int) -> list[list[int]]:
    """The rows, columns and boxes of a side x side board (boxes of sqrt(side) x sqrt(side)), as cell indices."""
    box = {4: 2, 9: 3}[side]
    return ([[r * side + c for c in range(side)] for r in range(side)]
            + [[r * side + c for r in range(side)] for c in range(side)]
            + [[(b // box * box + i // box) * side + b % box * box + i % box for i in range(side)]
               for b in range(side)])


_UNITS = {81: _units(9), 16: _units(4)}  # by the number of cells (the 4x4 boards of the studies too)


def read_jsonl(name: str) -> list[dict]:
    """Read a JSONL file from this task's data folder (independent of the working directory)."""
    path = DATA_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"Sudoku data file {path} is missing; regenerate it with the command in README.md")
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


def load_dataset(data_file: str = "test_easy.jsonl", **_: Any):
    """`custom_dataset` hook: a DatasetDict with one `test` split read from data/<data_file>."""
    import datasets

    rows = [{k: r[k] for k in ("puzzle", "solution", "difficulty", "clues")} for r in read_jsonl(data_file)]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def parse_answer(text: str) -> str:
    """Return the leading run of digits of a generation, whitespace ignored."""
    return _LEADING_DIGITS.match(_WHITESPACE.sub("", text)).group(0)


def is_valid_completion(puzzle: str, grid: str) -> bool:
    """True when grid is 81 digits 1-9 (a 4x4 puzzle: 16 digits 1-4), every unit holds each digit once, and it keeps
    every clue of puzzle."""
    units = _UNITS.get(len(puzzle))
    if units is None or len(grid) != len(puzzle) or not set(grid) <= set("123456789"[:len(units[0])]):
        return False
    if any(p != "0" and p != g for p, g in zip(puzzle, grid)):
        return False
    return all(len({grid[i] for i in unit}) == len(unit) for unit in units)


def cell_accuracy(puzzle: str, solution: str, answer: str) -> float:
    """Share of the puzzle's blank cells where answer has the solution's digit."""
    blanks = [i for i, p in enumerate(puzzle) if p == "0"]
    if not blanks:
        return 1.0
    return sum(i < len(answer) and answer[i] == solution[i] for i in blanks) / len(blanks)


def score(puzzle: str, solution: str, generation: str) -> dict[str, float]:
    """Return {'solved', 'cell_acc'} for one generation."""
    answer = parse_answer(generation)
    return {"solved": float(is_valid_completion(puzzle, answer)),
            "cell_acc": cell_accuracy(puzzle, solution, answer[:81])}


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """lm-eval hook: score the first generation of a document."""
    return score(doc["puzzle"], doc["solution"], results[0] if results else "")
