"""Sudoku puzzles for MDM training and evaluation.

* `random_grids(n, rng)`: random complete grids (vectorised random filling with constraint propagation).
* `generate(n, seed, difficulties)`: puzzles with exactly one solution, each labelled by `rate`.
* `rate(puzzles)`: difficulty from a human-strategy solver (vectorised over a batch of puzzles):
  - ``easy``: naked and hidden singles suffice;
  - ``medium``: also needs naked/hidden pairs or triples, or locked candidates (pointing / claiming);
  - ``hard``: those strategies stall; the puzzle needs search (its uniqueness is checked by `count_solutions`).
* `augment(puzzles, solutions, rng)`: random symmetric variants (digit relabelling, band/stack and row/column
  permutations, transposition): the same puzzle for a solver, so the same difficulty and one solution.
* CLI: ``python -m studies.sudoku.generate --n 100000 --out train.jsonl --seed 1 --difficulty easy,medium``;
  ``--augment K`` writes each puzzle with K-1 variants; ``--from FILE`` augments puzzles already generated.

Clue removal keeps a clue only while the puzzle stays solvable: for easy/medium puzzles by the strategy solver
(a strategy-solvable puzzle has exactly one solution, as every strategy step is a sound deduction), for hard
puzzles by the backtracking counter. Grids are flat 81-cell arrays in row-major order, 0 = blank.

`size` (default 9) also gives 4x4 puzzles (2x2 boxes, digits 1-4, 16-cell grids, ``--size 4``); every function
reads the size from the shapes it is given, and 9x9 output is unchanged by the option.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from emdm_core.errors import ConfigError

DIFFICULTIES = ("easy", "medium", "hard")
SIZES = (4, 9)  # grid side: 4x4 with 2x2 boxes, 9x9 with 3x3 boxes
_DIGIT_CHARS = set("0123456789")
LEVEL_SINGLES, LEVEL_SUBSETS = 1, 2


# --- board geometry ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Geometry:
    """Index tables of an n x n board (n = 4 or 9): cells, the 3n units and the strategies' bit tables."""

    n: int  # side = digits = cells per unit
    box: int  # box side (sqrt n)
    cells: int  # n * n
    part: np.ndarray  # [3, cells]: rows, columns, boxes; part[k] lists the cells unit by unit
    units: np.ndarray  # [3n, n]: unit u's cells
    part_inv: np.ndarray  # [3, cells]
    pow2: np.ndarray  # [n] int16 bit of each digit
    popcount: np.ndarray  # [2^n] int8
    full: int  # bit mask of all n digits
    combos: dict  # k -> [C, k] index combinations of n slots (k = 2, 3)
    notin: dict  # k -> [C, n]: slot j not in combo c


@lru_cache(maxsize=None)
def geometry(size: int = 9) -> Geometry:
    """Return the (cached) geometry of a size x size board; raise ValueError for a size other than 4 or 9."""
    if size not in SIZES:
        raise ValueError(f"unknown Sudoku size {size!r}; choose 4 (2x2 boxes) or 9 (3x3 boxes)")
    box, cells = int(round(size ** 0.5)), size * size
    cell = np.arange(cells)
    row, col = cell // size, cell % size
    boxes = (row // box) * box + col // box
    part = np.stack([np.argsort(key * cells + cell) for key in (row, col, boxes)])
    combos = {k: np.array(list(itertools.combinations(range(size), k))) for k in (2, 3)}
    return Geometry(n=size, box=box, cells=cells, part=part, units=part.reshape(3 * size, size),
                    part_inv=np.argsort(part, axis=1), pow2=(1 << np.arange(size)).astype(np.int16),
                    popcount=np.array([bin(i).count("1") for i in range(1 << size)], dtype=np.int8),
                    full=(1 << size) - 1, combos=combos,
                    notin={k: ~np.eye(size, dtype=bool)[c].any(1) for k, c in combos.items()})


def size_of_cells(cells: int) -> int:
    """Return the board side for a grid of `cells` cells (16 -> 4, 81 -> 9); raise ValueError otherwise."""
    for size in SIZES:
        if size * size == cells:
            return size
    raise ValueError(f"a Sudoku grid is 81 digits (16 for 4x4; 0 = blank); got {cells}")


def _geo(cand: np.ndarray) -> Geometry:
    """The geometry of a candidate array [B, cells, n]."""
    return geometry(cand.shape[-1])


# --- candidate arrays: bool [B, cells, n] ----------------------------------------------------------------------
def as_grids(puzzles: Sequence[str] | np.ndarray, size: int | None = None) -> np.ndarray:
    """Return puzzles (81- or 16-char strings, or an int array) as an int8 array [B, cells]; raise on bad input.

    The size comes from the length (81: 9x9, 16: 4x4) unless `size` is given.
    """
    if isinstance(puzzles, np.ndarray):
        cells = size * size if size else (puzzles.shape[-1] if puzzles.shape[-1:] == (16,) else 81)
        grids = puzzles.reshape(-1, cells) if puzzles.size % cells == 0 else puzzles
    else:
        puzzles = list(puzzles)
        first = puzzles[0] if puzzles else ""
        cells = size * size if size else (16 if isinstance(first, str) and len(first) == 16 else 81)
        for p in puzzles:
            if not isinstance(p, str) or len(p) != cells or not set(p) <= _DIGIT_CHARS:
                what = "81 digits" if cells == 81 else f"{cells} digits"
                raise ValueError(f"a Sudoku grid is {what} (0 = blank); got {p!r}")
        grids = np.frombuffer("".join(puzzles).encode(), dtype=np.uint8).reshape(-1, cells) - ord("0")
    if grids.ndim != 2 or grids.shape[1] not in (16, 81):
        raise ValueError(f"Sudoku grids must be [B, 81] (or [B, 16] for 4x4) with values 0-9; got shape {grids.shape}")
    n = size_of_cells(grids.shape[1])
    if grids.min(initial=0) < 0 or grids.max(initial=0) > n:
        raise ValueError(f"Sudoku grids of side {n} take values 0-{n}; got {grids.min()}-{grids.max()}")
    return grids.astype(np.int8)


def to_strings(grids: np.ndarray) -> list[str]:
    """Return an int array [B, cells] (81 or 16) as digit strings."""
    grids = np.asarray(grids, dtype=np.uint8)
    cells = 16 if grids.shape[-1:] == (16,) else 81
    flat = (grids.reshape(-1, cells) + ord("0")).tobytes().decode()
    return [flat[i:i + cells] for i in range(0, len(flat), cells)]


def candidates(grids: np.ndarray) -> np.ndarray:
    """Return the candidate array [B, cells, n] of grids [B, cells]: a given is its one digit, a blank is all n."""
    n = size_of_cells(grids.shape[-1])
    onehot = np.eye(n + 1, dtype=bool)[grids][..., 1:]
    return np.where((grids > 0)[..., None], onehot, True)


def _to_units(cand: np.ndarray) -> np.ndarray:
    """View cand [B, cells, n] unit by unit: [B, 3n, n cells, n digits]."""
    return cand[:, _geo(cand).units]


def _from_units_and(units: np.ndarray) -> np.ndarray:
    """AND the three partition views [B, 3n, n, n] back into one candidate array [B, cells, n]."""
    g = geometry(units.shape[-1])
    parts = units.reshape(units.shape[0], 3, g.cells, g.n)
    return parts[:, 0][:, g.part_inv[0]] & parts[:, 1][:, g.part_inv[1]] & parts[:, 2][:, g.part_inv[2]]


def _from_units_or(units: np.ndarray) -> np.ndarray:
    """OR the three partition views [B, 3n, n, n] back into one array [B, cells, n]."""
    g = geometry(units.shape[-1])
    parts = units.reshape(units.shape[0], 3, g.cells, g.n)
    return parts[:, 0][:, g.part_inv[0]] | parts[:, 1][:, g.part_inv[1]] | parts[:, 2][:, g.part_inv[2]]


def _singles_step(cand: np.ndarray) -> np.ndarray:
    """One round of naked singles (eliminate placed digits from peers) then hidden singles."""
    placed = _to_units(cand & (cand.sum(-1, dtype=np.uint8) == 1)[..., None])  # [B, 3n, n, n]
    seen_elsewhere = placed.sum(2, dtype=np.uint8, keepdims=True) - placed > 0
    cand = cand & ~_from_units_or(seen_elsewhere)
    units = _to_units(cand)
    forced = _from_units_or(units & (units.sum(2, dtype=np.uint8) == 1)[:, :, None, :])
    return np.where(forced.any(-1, keepdims=True), forced, cand)


def _subset_elim(units: np.ndarray) -> np.ndarray:
    """Naked pairs/triples along the last axis of units [B, 3n, n slots, n values]: eliminated bits [B, 3n, n]."""
    g = geometry(units.shape[-1])
    masks = (units * g.pow2).sum(-1, dtype=np.int16)  # [B, 3n, n] value set of each slot
    masks = np.where(g.popcount[masks] >= 2, masks, g.full)  # a settled slot never joins a subset
    elim = np.zeros(masks.shape, dtype=np.int16)
    for k, combos in g.combos.items():
        union = np.bitwise_or.reduce(masks[..., combos], axis=-1)  # [B, 3n, C]
        b, u, c = np.nonzero(g.popcount[union] == k)
        if b.size:
            hit, slot = np.nonzero(g.notin[k][c])  # every slot outside the subset loses the subset's values
            np.bitwise_or.at(elim, (b[hit], u[hit], slot), union[b, u, c][hit])
    return elim


def _bits(masks: np.ndarray, n: int = 9) -> np.ndarray:
    """Expand int bit masks [...] into bool [..., n]."""
    return ((masks[..., None] >> np.arange(n)) & 1).astype(bool)


def _locked_rows(cand: np.ndarray) -> np.ndarray:
    """Locked candidates between rows and boxes (pointing and claiming): cand with those eliminations applied."""
    b, g = cand.shape[0], _geo(cand)
    k = g.box
    grid = cand.reshape(b, k, k, k, k, g.n)  # band, row in band, stack, column in stack, digit
    seg = grid.any(4)  # [B, band, r, stack, d]: digit d possible in the row segment
    point = seg & (seg.sum(2, keepdims=True) == 1)  # box confines d to one row
    claim = seg & (seg.sum(3, keepdims=True) == 1)  # row confines d to one box
    elim = (point.sum(3, keepdims=True) - point > 0) | (claim.sum(2, keepdims=True) - claim > 0)
    return (grid & ~elim[:, :, :, :, None, :]).reshape(b, g.cells, g.n)


def _transpose(cand: np.ndarray) -> np.ndarray:
    """Swap rows and columns of cand [B, cells, n]."""
    n = cand.shape[-1]
    return cand.reshape(-1, n, n, n).swapaxes(1, 2).reshape(-1, n * n, n)


def _subsets_step(cand: np.ndarray) -> np.ndarray:
    """One round of naked and hidden pairs/triples and locked candidates."""
    n = cand.shape[-1]
    units = _to_units(cand)
    naked = _bits(_subset_elim(units), n)  # [B, 3n, cell, digit]
    hidden = _bits(_subset_elim(units.swapaxes(2, 3)), n).swapaxes(2, 3)
    cand = cand & _from_units_and(units & ~naked & ~hidden)
    cand = _locked_rows(cand)
    return _transpose(_locked_rows(_transpose(cand)))


def _status(cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (solved, contradiction) masks [B] of candidate arrays."""
    counts = cand.sum(-1, dtype=np.uint8)
    bad = (counts == 0).any(1) | ~_to_units(cand).any(2).all((1, 2))
    return (counts == 1).all(1) & ~bad, bad


def logic_solve(cand: np.ndarray, level: int = LEVEL_SUBSETS, until: np.ndarray | None = None) -> np.ndarray:
    """Apply the strategies up to `level` until nothing changes; return the reduced candidate arrays.

    With `until` (one cell per row), a row also stops once that cell is settled.
    """
    cand = cand.copy()
    active = np.arange(cand.shape[0])
    while active.size:
        cur = cand[active]
        new = _singles_step(cur)
        if level >= LEVEL_SUBSETS:
            stalled = (new == cur).all((1, 2))
            if stalled.any():
                new[stalled] = _subsets_step(new[stalled])
        keep = (new != cur).any((1, 2))  # solved and contradicted rows stop changing too
        cand[active] = new
        if until is not None:
            keep &= new[np.arange(len(new)), until[active]].sum(-1) > 1
        active = active[keep]
    return cand


def deduces(grids: np.ndarray, cells: np.ndarray, level: int = LEVEL_SUBSETS) -> np.ndarray:
    """Return a bool mask [B]: the strategies up to `level` settle cell cells[i] of puzzle i."""
    cand = logic_solve(candidates(grids), level, until=cells)
    return (cand[np.arange(len(cand)), cells].sum(-1) == 1) & ~_status(cand)[1]


def solved_by_logic(grids: np.ndarray, level: int = LEVEL_SUBSETS) -> np.ndarray:
    """Return a bool mask [B]: the strategies up to `level` solve the puzzle completely."""
    return _status(logic_solve(candidates(grids), level))[0]


def rate(puzzles: Sequence[str] | np.ndarray) -> list[str]:
    """Label each puzzle 'easy', 'medium' or 'hard' by the simplest strategy level that solves it.

    'hard' only means the strategies stall: check uniqueness separately (`count_solutions`) for foreign puzzles.
    """
    grids = as_grids(puzzles)
    cand = logic_solve(candidates(grids), LEVEL_SINGLES)
    easy = _status(cand)[0]
    medium = _status(logic_solve(cand, LEVEL_SUBSETS))[0] & ~easy
    return np.where(easy, "easy", np.where(medium, "medium", "hard")).tolist()


# --- backtracking (uniqueness of search-only puzzles) ------------------------------------------------------------
def count_solutions(puzzle: str | Sequence[int], limit: int = 2) -> int:
    """Count the solutions of one puzzle (81 or 16 cells) by depth-first search with bit masks, up to `limit`."""
    cells = [int(c) for c in puzzle]
    side = size_of_cells(len(cells))
    k, full = geometry(side).box, (1 << side) - 1
    rows, cols, boxes = [0] * side, [0] * side, [0] * side
    blanks = []
    for i, v in enumerate(cells):
        r, c = divmod(i, side)
        b = (r // k) * k + c // k
        if v:
            bit = 1 << (v - 1)
            if (rows[r] | cols[c] | boxes[b]) & bit:
                return 0
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
        else:
            blanks.append((r, c, b))
    found = 0

    def search(todo: list) -> None:
        nonlocal found
        if not todo:
            found += 1
            return
        best, best_free, best_n = 0, 0, side + 1
        for j, (r, c, b) in enumerate(todo):
            free = full & ~(rows[r] | cols[c] | boxes[b])
            n = bin(free).count("1")
            if n < best_n:
                best, best_free, best_n = j, free, n
                if n <= 1:
                    break
        if best_n == 0:
            return
        r, c, b = todo[best]
        rest = todo[:best] + todo[best + 1:]
        while best_free and found < limit:
            bit = best_free & -best_free
            best_free ^= bit
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
            search(rest)
            rows[r] ^= bit
            cols[c] ^= bit
            boxes[b] ^= bit

    search(blanks)
    return found


# --- generation ----------------------------------------------------------------------------------------------------
def random_grids(n: int, rng: np.random.Generator, size: int = 9) -> np.ndarray:
    """Return n random complete grids [n, size^2] (random cell/digit choices, propagation, restart on contradiction)."""
    g = geometry(size)
    cand = np.ones((n, g.cells, g.n), dtype=bool)
    done = np.zeros(n, dtype=bool)
    while not done.all():
        idx = np.flatnonzero(~done)
        cur = logic_solve(cand[idx], LEVEL_SINGLES)
        solved, bad = _status(cur)
        cur[bad] = True  # restart from an empty grid
        todo = ~solved & ~bad
        if todo.any():
            sub = cur[todo]
            counts = sub.sum(-1)
            score = np.where(counts > 1, counts + rng.random(counts.shape), np.inf)  # fewest candidates, random ties
            cell = score.argmin(1)
            options = sub[np.arange(len(sub)), cell]
            pick = (np.where(options, rng.random(options.shape), -1.0)).argmax(1)
            sub[np.arange(len(sub)), cell] = np.eye(g.n, dtype=bool)[pick]
            cur[todo] = sub
        cand[idx] = cur
        done[idx[solved]] = True
    return (cand.argmax(-1) + 1).astype(np.int8)


def _unique_without(grids: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Return a bool mask [B]: puzzle i, unique with its cell cells[i] given, stays unique with it blank."""
    ok = deduces(grids, cells, LEVEL_SUBSETS)
    for i in np.flatnonzero(~ok):
        ok[i] = count_solutions(grids[i].tolist()) == 1
    return ok


def remove_clues(solutions: np.ndarray, rng: np.random.Generator, level: int | None,
                 min_clues: int | None = None) -> np.ndarray:
    """Blank cells of complete grids in random order, keeping a blank while the puzzle stays solvable.

    `level` = LEVEL_SINGLES / LEVEL_SUBSETS: solvable by those strategies; None: a unique solution (search).
    `min_clues` (default: the size's minimum, 17 for 9x9, 4 for 4x4) stops removal earlier.
    """
    min_clues = default_min_clues(size_of_cells(solutions.shape[1])) if min_clues is None else min_clues
    puzzles = solutions.copy()
    order = rng.random(solutions.shape).argsort(1)
    rows = np.arange(len(puzzles))
    for step in range(solutions.shape[1]):
        live = rows[(puzzles > 0).sum(1) > min_clues]
        if not live.size:
            break
        trial, cells = puzzles[live], order[live, step]
        trial[np.arange(live.size), cells] = 0
        # the smaller puzzle is still solvable iff the solver deduces the blanked cell again
        ok = _unique_without(trial, cells) if level is None else deduces(trial, cells, level)
        puzzles[live[ok]] = trial[ok]
    return puzzles


def augment(puzzles: np.ndarray, solutions: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return a random symmetric variant of each (puzzle, solution) pair: flat grids [B, cells] -> same shapes.

    Applies, per row, a digit relabelling, a permutation of the bands and of the rows inside each band, the same
    for stacks and columns, and a transposition with probability 1/2; puzzle and solution get the same map, so
    the variant has one solution iff the original has, and every human strategy applies to it alike.
    """
    puzzles, solutions = np.asarray(puzzles), np.asarray(solutions)
    if puzzles.shape != solutions.shape or puzzles.ndim != 2:
        raise ValueError(f"puzzles and solutions must be [B, cells] arrays of one shape; got {puzzles.shape} "
                         f"and {solutions.shape}")
    g = geometry(size_of_cells(puzzles.shape[1]))
    b, n, k = len(puzzles), g.n, g.box

    def lines() -> np.ndarray:  # [B, n]: a band order, then a row order inside each band
        bands = rng.random((b, k)).argsort(1)
        inside = rng.random((b, k, k)).argsort(2)
        return (bands[:, :, None] * k + inside).reshape(b, n)

    rows, cols = lines(), lines()
    flip = rng.random(b) < 0.5
    rows, cols = np.where(flip[:, None], cols, rows), np.where(flip[:, None], rows, cols)
    lut = np.concatenate([np.zeros((b, 1), np.int64), rng.random((b, n)).argsort(1) + 1], 1)  # 0 stays blank
    cell = rows[:, :, None] * n + cols[:, None, :]  # new (r, c) reads old (rows[r], cols[c])
    cell = np.where(flip[:, None, None], cell.transpose(0, 2, 1), cell).reshape(b, g.cells)
    at = np.arange(b)[:, None]

    def remap(grids: np.ndarray) -> np.ndarray:
        return lut[at, grids.astype(np.int64)[at, cell]].astype(grids.dtype)

    return remap(puzzles), remap(solutions)


def augmented(records: Iterable[dict], copies: int, seed: int = 0, skip: set[str] = frozenset(),
              batch: int = 1000) -> Iterable[dict]:
    """Yield each `record` dict followed by `copies - 1` random symmetric variants, labelled with its difficulty
    (symmetry keeps it); a variant in `skip` is left out."""
    if copies < 1:
        raise ValueError(f"--augment must be at least 1 (1 = no variants); got {copies}")
    rng = np.random.default_rng([seed, 0x5d0c])
    it = iter(records)
    while chunk := list(itertools.islice(it, batch)):
        variants = []
        if copies > 1:
            puzzles = np.repeat(as_grids([r["puzzle"] for r in chunk]), copies - 1, 0)
            solutions = np.repeat(as_grids([r["solution"] for r in chunk]), copies - 1, 0)
            p, s = augment(puzzles, solutions, rng)
            variants = list(zip(to_strings(p), to_strings(s)))
        for i, rec in enumerate(chunk):
            yield rec
            for p, s in variants[i * (copies - 1):(i + 1) * (copies - 1)]:
                if p not in skip:
                    yield record(p, s, rec["difficulty"])


def _check_size(size: int, wanted: tuple[str, ...]) -> None:
    """Raise ValueError for an unknown size, or 4x4 without `easy` (every 4x4 puzzle falls to singles)."""
    geometry(size)
    if size == 4 and "easy" not in wanted:
        raise ValueError("every 4x4 puzzle with one solution is solved by singles (all are 'easy'); "
                         "ask for --difficulty easy (a list with easy picks the removal test, e.g. easy,hard)")


def default_min_clues(size: int = 9) -> int:
    """The fewest clues a puzzle with one solution can have: 17 for 9x9, 4 for 4x4."""
    return 17 if size == 9 else 4


def _parse_difficulties(difficulties: str | Iterable[str]) -> tuple[str, ...]:
    """Return a validated tuple of difficulty names from 'easy,medium' or an iterable."""
    names = difficulties.split(",") if isinstance(difficulties, str) else list(difficulties)
    names = tuple(dict.fromkeys(n.strip() for n in names if n.strip()))
    bad = [n for n in names if n not in DIFFICULTIES]
    if bad or not names:
        raise ValueError(f"unknown difficulty {bad or names!r}; choose from {', '.join(DIFFICULTIES)}")
    return names


def _level(wanted: tuple[str, ...]) -> int | None:
    """The removal test for a set of difficulties: strategy level, or None for uniqueness by search."""
    return None if "hard" in wanted else LEVEL_SUBSETS if "medium" in wanted else LEVEL_SINGLES


def _default_batch(wanted: tuple[str, ...]) -> int:
    """Grids per vectorised batch: large for the strategy solver, smaller when search is involved."""
    return 64 if _level(wanted) is None else 512


def generate_chunk(n: int, seed: int | Sequence[int], difficulties: str | Iterable[str] = ("easy", "medium"),
                   min_clues: int | None = None, batch: int | None = None, size: int = 9) -> list[dict]:
    """Generate n puzzles of the given difficulties from one seed, batch after batch (fewer n: a prefix)."""
    wanted = _parse_difficulties(difficulties)
    _check_size(size, wanted)
    level = _level(wanted)
    rng = np.random.default_rng(seed)
    batch = batch or _default_batch(wanted)
    out: list[dict] = []
    while len(out) < n:
        solutions = random_grids(batch, rng, size)
        puzzles = remove_clues(solutions, rng, level, min_clues)
        labels = rate(puzzles)
        for p, s, d in zip(to_strings(puzzles), to_strings(solutions), labels):
            if d in wanted and len(out) < n:
                out.append(record(p, s, d))
    return out


def record(puzzle: str, solution: str, difficulty: str) -> dict:
    """Return one JSONL record: the task fields plus the trainer's prompt/response view."""
    return {"puzzle": puzzle, "solution": solution, "difficulty": difficulty,
            "clues": len(puzzle) - puzzle.count("0"), "prompt": puzzle, "response": solution}


def _chunk_job(args: tuple) -> list[dict]:
    """Pool worker: one chunk from (n, seed, chunk index, difficulties, min_clues, batch, size)."""
    n, seed, index, difficulties, min_clues, batch, size = args
    return generate_chunk(n, (seed, index), difficulties, min_clues, batch, size)


def generate(n: int, seed: int = 0, difficulties: str | Iterable[str] = ("easy", "medium"),
             min_clues: int | None = None, workers: int = 1, chunk: int = 1000, exclude: Iterable[str] = (),
             size: int = 9) -> Iterable[dict]:
    """Yield n puzzle records, chunk by chunk (chunk i seeded by (seed, i)).

    The output depends on (seed, difficulties, min_clues, chunk, size), not on workers; a larger n extends a
    smaller one. `size` 4 gives 4x4 puzzles (16-character strings); `min_clues` defaults to the size's minimum.
    """
    if n < 0 or chunk < 1 or workers < 1:
        raise ValueError("n must be >= 0, chunk and workers >= 1")
    wanted = _parse_difficulties(difficulties)
    _check_size(size, wanted)
    skip = set(exclude)
    batch = min(_default_batch(wanted), chunk)
    jobs = [(min(chunk, n - start), seed, i, wanted, min_clues, batch, size)
            for i, start in enumerate(range(0, n, chunk))]
    left = n
    if workers == 1:
        results = map(_chunk_job, jobs)
    else:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(workers)
        results = pool.imap(_chunk_job, jobs)
    try:
        for part in results:
            for rec in part:
                if left and rec["puzzle"] not in skip:
                    left -= 1
                    yield rec
    finally:
        if workers > 1:
            pool.terminate()
    index = len(jobs)
    while left:  # excluded puzzles are replaced from further chunks
        for rec in _chunk_job((min(chunk, left), seed, index, wanted, min_clues, batch, size)):
            if left and rec["puzzle"] not in skip:
                left -= 1
                yield rec
        index += 1


def load_puzzles(paths: Iterable[str | Path]) -> set[str]:
    """Return the set of puzzle strings in JSONL files (used to keep training data off the test sets)."""
    found: set[str] = set()
    for path in paths:
        with open(path) as f:
            found.update(json.loads(line)["puzzle"] for line in f if line.strip())
    return found


def _read_records(paths: Iterable[str | Path]) -> list[dict]:
    """Puzzle records from JSONL files, fields checked; a record without a difficulty is rated (one batched call)."""
    raw: list[dict] = []
    for path in paths:
        with open(path) as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                rec = json.loads(line)
                if not isinstance(rec.get("puzzle"), str) or not isinstance(rec.get("solution"), str):
                    raise ValueError(f"{path}:{number}: a record needs string fields 'puzzle' and 'solution'")
                raw.append(rec)
    unrated = [r["puzzle"] for r in raw if not r.get("difficulty")]
    labels = iter(rate(unrated) if unrated else [])
    return [record(r["puzzle"], r["solution"], r.get("difficulty") or next(labels)) for r in raw]


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: write n generated puzzles as JSONL and report the speed on stderr (one-line errors, exit status 2)."""
    from emdm_core.cli import run_cli

    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    ap = argparse.ArgumentParser(prog="python -m studies.sudoku.generate", description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, help="number of puzzles to generate (with --from: the first n; default all)")
    ap.add_argument("--out", required=True, help="output JSONL path ('-' for stdout)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--difficulty", default="easy,medium", help="comma list of easy, medium, hard")
    ap.add_argument("--min-clues", type=int, default=None,
                    help="stop removing clues at this many (default: 17 for 9x9, 4 for 4x4)")
    ap.add_argument("--size", type=int, default=9, choices=SIZES, help="grid side: 9 (3x3 boxes) or 4 (2x2 boxes)")
    ap.add_argument("--workers", type=int, default=1, help="processes (output does not depend on it)")
    ap.add_argument("--chunk", type=int, default=1000, help="puzzles per seeded chunk (output depends on it)")
    ap.add_argument("--exclude", nargs="*", default=[], help="JSONL files whose puzzles must not be emitted")
    ap.add_argument("--augment", type=int, default=1, metavar="K",
                    help="write each puzzle and K-1 random symmetric variants of it (relabelled digits, permuted "
                         "rows/columns/bands/stacks, transposed): K times the data at no solver cost")
    ap.add_argument("--from", dest="source", nargs="*", default=[], metavar="FILE",
                    help="read puzzles from these JSONL files instead of generating (use with --augment)")
    args = ap.parse_args(argv)
    if args.n is None and not args.source:
        ap.error("give --n (puzzles to generate) or --from FILE (puzzles to augment)")
    try:
        skip = load_puzzles(args.exclude)
        if args.source:
            records = (r for r in _read_records(args.source) if r["puzzle"] not in skip)
            records = itertools.islice(records, args.n) if args.n is not None else records
        else:
            records = generate(args.n, args.seed, args.difficulty, args.min_clues, args.workers, args.chunk,
                               skip, args.size)
        records = augmented(records, args.augment, args.seed, skip)
        start, count = time.time(), {d: 0 for d in DIFFICULTIES}
        out = sys.stdout if args.out == "-" else open(args.out, "w")
        total = args.n * max(args.augment or 1, 1) if not args.source and args.n else None
        last = start
        try:
            for rec in records:
                out.write(json.dumps(rec) + "\n")
                count[rec["difficulty"]] = count.get(rec["difficulty"], 0) + 1
                if time.time() - last >= 10:  # a line every 10 s: long runs are not silent (terminal or log)
                    last = time.time()
                    done = sum(count.values())
                    print(f"generate: {done:,}" + (f" / {total:,}" if total else "") + f" puzzles, "
                          f"{last - start:.0f}s", file=sys.stderr, flush=True)
        finally:
            if out is not sys.stdout:
                out.close()
    except ValueError as err:
        raise ConfigError(str(err)) from None
    secs = time.time() - start
    print(f"wrote {sum(count.values())} puzzles {count} in {secs:.1f}s "
          f"({sum(count.values()) / max(secs, 1e-9):.1f} puzzles/s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
