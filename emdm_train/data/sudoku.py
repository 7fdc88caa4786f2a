"""Sudoku puzzles for MDM training and evaluation.

* `random_grids(n, rng)`: random complete grids (vectorised random filling with constraint propagation).
* `generate(n, seed, difficulties)`: puzzles with exactly one solution, each labelled by `rate`.
* `rate(puzzles)`: difficulty from a human-strategy solver (vectorised over a batch of puzzles):
  - ``easy``: naked and hidden singles suffice;
  - ``medium``: also needs naked/hidden pairs or triples, or locked candidates (pointing / claiming);
  - ``hard``: those strategies stall; the puzzle needs search (its uniqueness is checked by `count_solutions`).
* CLI: ``python -m emdm_train.data.sudoku --n 100000 --out train.jsonl --seed 1 --difficulty easy,medium``.

Clue removal keeps a clue only while the puzzle stays solvable: for easy/medium puzzles by the strategy solver
(a strategy-solvable puzzle has exactly one solution, as every strategy step is a sound deduction), for hard
puzzles by the backtracking counter. Grids are flat 81-cell arrays in row-major order, 0 = blank.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

DIFFICULTIES = ("easy", "medium", "hard")
_DIGIT_CHARS = set("0123456789")
LEVEL_SINGLES, LEVEL_SUBSETS = 1, 2

# --- board geometry ---------------------------------------------------------------------------------------------
_CELL = np.arange(81)
_ROW, _COL = _CELL // 9, _CELL % 9
_BOX = (_ROW // 3) * 3 + _COL // 3
# three partitions of the 81 cells into units: rows, columns, boxes; _PART[k] lists the cells unit by unit
_PART = np.stack([np.argsort(key * 81 + _CELL) for key in (_ROW, _COL, _BOX)])
_UNITS = _PART.reshape(27, 9)  # unit u's nine cells
_PART_INV = np.argsort(_PART, axis=1)
_POW2 = (1 << np.arange(9)).astype(np.int16)
_POPCOUNT = np.array([bin(i).count("1") for i in range(512)], dtype=np.int8)
_COMBOS = {k: np.array(list(itertools.combinations(range(9), k))) for k in (2, 3)}
_NOTIN = {k: ~np.eye(9, dtype=bool)[c].any(1) for k, c in _COMBOS.items()}  # [C, 9]: slot j not in combo c


# --- candidate arrays: bool [B, 81, 9] ------------------------------------------------------------------------
def as_grids(puzzles: Sequence[str] | np.ndarray) -> np.ndarray:
    """Return puzzles (81-char strings or an int array) as an int8 array [B, 81]; raise on bad input."""
    if isinstance(puzzles, np.ndarray):
        grids = puzzles.reshape(-1, 81) if puzzles.size % 81 == 0 else puzzles
    else:
        for p in puzzles:
            if not isinstance(p, str) or len(p) != 81 or not set(p) <= _DIGIT_CHARS:
                raise ValueError(f"a Sudoku grid is 81 digits (0 = blank); got {p!r}")
        grids = np.frombuffer("".join(puzzles).encode(), dtype=np.uint8).reshape(-1, 81) - ord("0")
    if grids.ndim != 2 or grids.shape[1] != 81 or grids.min(initial=0) < 0 or grids.max(initial=0) > 9:
        raise ValueError(f"Sudoku grids must be [B, 81] with values 0-9; got shape {grids.shape}")
    return grids.astype(np.int8)


def to_strings(grids: np.ndarray) -> list[str]:
    """Return an int array [B, 81] as 81-character digit strings."""
    flat = (np.asarray(grids, dtype=np.uint8).reshape(-1, 81) + ord("0")).tobytes().decode()
    return [flat[i:i + 81] for i in range(0, len(flat), 81)]


def candidates(grids: np.ndarray) -> np.ndarray:
    """Return the candidate array [B, 81, 9] of grids [B, 81]: a given is its one digit, a blank is all nine."""
    onehot = np.eye(10, dtype=bool)[grids][..., 1:]
    return np.where((grids > 0)[..., None], onehot, True)


def _to_units(cand: np.ndarray) -> np.ndarray:
    """View cand [B, 81, 9] unit by unit: [B, 27, 9 cells, 9 digits]."""
    return cand[:, _UNITS]


def _from_units_and(units: np.ndarray) -> np.ndarray:
    """AND the three partition views [B, 27, 9, 9] back into one candidate array [B, 81, 9]."""
    b = units.shape[0]
    parts = units.reshape(b, 3, 81, 9)
    return parts[:, 0][:, _PART_INV[0]] & parts[:, 1][:, _PART_INV[1]] & parts[:, 2][:, _PART_INV[2]]


def _from_units_or(units: np.ndarray) -> np.ndarray:
    """OR the three partition views [B, 27, 9, 9] back into one array [B, 81, 9]."""
    b = units.shape[0]
    parts = units.reshape(b, 3, 81, 9)
    return parts[:, 0][:, _PART_INV[0]] | parts[:, 1][:, _PART_INV[1]] | parts[:, 2][:, _PART_INV[2]]


def _singles_step(cand: np.ndarray) -> np.ndarray:
    """One round of naked singles (eliminate placed digits from peers) then hidden singles."""
    placed = _to_units(cand & (cand.sum(-1, dtype=np.uint8) == 1)[..., None])  # [B, 27, 9, 9]
    seen_elsewhere = placed.sum(2, dtype=np.uint8, keepdims=True) - placed > 0
    cand = cand & ~_from_units_or(seen_elsewhere)
    units = _to_units(cand)
    forced = _from_units_or(units & (units.sum(2, dtype=np.uint8) == 1)[:, :, None, :])
    return np.where(forced.any(-1, keepdims=True), forced, cand)


def _subset_elim(units: np.ndarray) -> np.ndarray:
    """Naked pairs/triples along the last axis of units [B, 27, 9 slots, 9 values]: eliminated bits [B, 27, 9]."""
    masks = (units * _POW2).sum(-1, dtype=np.int16)  # [B, 27, 9] value set of each slot
    masks = np.where(_POPCOUNT[masks] >= 2, masks, 0x1FF)  # a settled slot never joins a subset
    elim = np.zeros(masks.shape, dtype=np.int16)
    for k, combos in _COMBOS.items():
        union = np.bitwise_or.reduce(masks[..., combos], axis=-1)  # [B, 27, C]
        b, u, c = np.nonzero(_POPCOUNT[union] == k)
        if b.size:
            hit, slot = np.nonzero(_NOTIN[k][c])  # every slot outside the subset loses the subset's values
            np.bitwise_or.at(elim, (b[hit], u[hit], slot), union[b, u, c][hit])
    return elim


def _bits(masks: np.ndarray) -> np.ndarray:
    """Expand int bit masks [...] into bool [..., 9]."""
    return ((masks[..., None] >> np.arange(9)) & 1).astype(bool)


def _locked_rows(cand: np.ndarray) -> np.ndarray:
    """Locked candidates between rows and boxes (pointing and claiming): cand with those eliminations applied."""
    b = cand.shape[0]
    grid = cand.reshape(b, 3, 3, 3, 3, 9)  # band, row in band, stack, column in stack, digit
    seg = grid.any(4)  # [B, band, r, stack, d]: digit d possible in the row segment
    point = seg & (seg.sum(2, keepdims=True) == 1)  # box confines d to one row
    claim = seg & (seg.sum(3, keepdims=True) == 1)  # row confines d to one box
    elim = (point.sum(3, keepdims=True) - point > 0) | (claim.sum(2, keepdims=True) - claim > 0)
    return (grid & ~elim[:, :, :, :, None, :]).reshape(b, 81, 9)


def _transpose(cand: np.ndarray) -> np.ndarray:
    """Swap rows and columns of cand [B, 81, 9]."""
    return cand.reshape(-1, 9, 9, 9).swapaxes(1, 2).reshape(-1, 81, 9)


def _subsets_step(cand: np.ndarray) -> np.ndarray:
    """One round of naked and hidden pairs/triples and locked candidates."""
    units = _to_units(cand)
    naked = _bits(_subset_elim(units))  # [B, 27, cell, digit]
    hidden = _bits(_subset_elim(units.swapaxes(2, 3))).swapaxes(2, 3)
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
    """Count the solutions of one puzzle by depth-first search with bit masks, stopping at `limit`."""
    cells = [int(c) for c in puzzle]
    if len(cells) != 81:
        raise ValueError(f"a Sudoku grid is 81 digits (0 = blank); got {len(cells)}")
    rows, cols, boxes = [0] * 9, [0] * 9, [0] * 9
    blanks = []
    for i, v in enumerate(cells):
        r, c, b = i // 9, i % 9, (i // 27) * 3 + (i % 9) // 3
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
        best, best_free, best_n = 0, 0, 10
        for j, (r, c, b) in enumerate(todo):
            free = 0x1FF & ~(rows[r] | cols[c] | boxes[b])
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
def random_grids(n: int, rng: np.random.Generator) -> np.ndarray:
    """Return n random complete grids [n, 81] (random cell/digit choices, propagation, restart on contradiction)."""
    cand = np.ones((n, 81, 9), dtype=bool)
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
            sub[np.arange(len(sub)), cell] = np.eye(9, dtype=bool)[pick]
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
                 min_clues: int = 17) -> np.ndarray:
    """Blank cells of complete grids in random order, keeping a blank while the puzzle stays solvable.

    `level` = LEVEL_SINGLES / LEVEL_SUBSETS: solvable by those strategies; None: a unique solution (search).
    """
    puzzles = solutions.copy()
    order = rng.random(solutions.shape).argsort(1)
    rows = np.arange(len(puzzles))
    for step in range(81):
        live = rows[(puzzles > 0).sum(1) > min_clues]
        if not live.size:
            break
        trial, cells = puzzles[live], order[live, step]
        trial[np.arange(live.size), cells] = 0
        # the smaller puzzle is still solvable iff the solver deduces the blanked cell again
        ok = _unique_without(trial, cells) if level is None else deduces(trial, cells, level)
        puzzles[live[ok]] = trial[ok]
    return puzzles


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
                   min_clues: int = 17, batch: int | None = None) -> list[dict]:
    """Generate n puzzles of the given difficulties from one seed, batch after batch (fewer n: a prefix)."""
    wanted = _parse_difficulties(difficulties)
    level = _level(wanted)
    rng = np.random.default_rng(seed)
    batch = batch or _default_batch(wanted)
    out: list[dict] = []
    while len(out) < n:
        solutions = random_grids(batch, rng)
        puzzles = remove_clues(solutions, rng, level, min_clues)
        labels = rate(puzzles)
        for p, s, d in zip(to_strings(puzzles), to_strings(solutions), labels):
            if d in wanted and len(out) < n:
                out.append(record(p, s, d))
    return out


def record(puzzle: str, solution: str, difficulty: str) -> dict:
    """Return one JSONL record: the task fields plus the trainer's prompt/response view."""
    return {"puzzle": puzzle, "solution": solution, "difficulty": difficulty,
            "clues": 81 - puzzle.count("0"), "prompt": puzzle, "response": solution}


def _chunk_job(args: tuple) -> list[dict]:
    """Pool worker: one chunk from (n, seed, chunk index, difficulties, min_clues, batch)."""
    n, seed, index, difficulties, min_clues, batch = args
    return generate_chunk(n, (seed, index), difficulties, min_clues, batch)


def generate(n: int, seed: int = 0, difficulties: str | Iterable[str] = ("easy", "medium"), min_clues: int = 17,
             workers: int = 1, chunk: int = 1000, exclude: Iterable[str] = ()) -> Iterable[dict]:
    """Yield n puzzle records, chunk by chunk (chunk i seeded by (seed, i)).

    The output depends on (seed, difficulties, min_clues, chunk), not on workers; a larger n extends a smaller one.
    """
    if n < 0 or chunk < 1 or workers < 1:
        raise ValueError("n must be >= 0, chunk and workers >= 1")
    wanted = _parse_difficulties(difficulties)
    skip = set(exclude)
    batch = min(_default_batch(wanted), chunk)
    jobs = [(min(chunk, n - start), seed, i, wanted, min_clues, batch) for i, start in enumerate(range(0, n, chunk))]
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
        for rec in _chunk_job((min(chunk, left), seed, index, wanted, min_clues, batch)):
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


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: write n generated puzzles as JSONL and report the speed on stderr."""
    ap = argparse.ArgumentParser(prog="python -m emdm_train.data.sudoku", description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, required=True, help="number of puzzles")
    ap.add_argument("--out", required=True, help="output JSONL path ('-' for stdout)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--difficulty", default="easy,medium", help="comma list of easy, medium, hard")
    ap.add_argument("--min-clues", type=int, default=17, help="stop removing clues at this many")
    ap.add_argument("--workers", type=int, default=1, help="processes (output does not depend on it)")
    ap.add_argument("--chunk", type=int, default=1000, help="puzzles per seeded chunk (output depends on it)")
    ap.add_argument("--exclude", nargs="*", default=[], help="JSONL files whose puzzles must not be emitted")
    args = ap.parse_args(argv)
    try:
        records = generate(args.n, args.seed, args.difficulty, args.min_clues, args.workers, args.chunk,
                           load_puzzles(args.exclude))
        start, count = time.time(), {d: 0 for d in DIFFICULTIES}
        out = sys.stdout if args.out == "-" else open(args.out, "w")
        try:
            for rec in records:
                out.write(json.dumps(rec) + "\n")
                count[rec["difficulty"]] += 1
        finally:
            if out is not sys.stdout:
                out.close()
    except (ValueError, OSError) as err:
        sys.exit(f"error: {err}")
    secs = time.time() - start
    print(f"wrote {sum(count.values())} puzzles {count} in {secs:.1f}s "
          f"({sum(count.values()) / max(secs, 1e-9):.1f} puzzles/s)", file=sys.stderr)


if __name__ == "__main__":
    main()
