"""Long-addition problems: `a+b=` with two fixed-width numbers, the answer their fixed-width sum.

    python -m studies.addition.generate --seed 7 --n 1000 --out test.jsonl [--digits 32] [--exclude F ...]

Each row is {"prompt": "a+b=", "response": s, "a": a, "b": b}: `a` and `b` are `--digits` random decimal digits
(leading zeros allowed: the width is fixed, so digit k of every operand sits at the same position), `s` their sum
written with `digits + 1` digits. With 32 digits the prompt is 66 tokens and the answer 33, and the answer's tokens
depend on each other through the carries: the digit at place k is (a_k + b_k + carry_k) mod 10, and carry_k is
known from the digits to its right only through a chain that a model must follow. Rows are drawn from a seeded
numpy generator, so a seed gives the same file on any machine.

Held-out sets are disjoint from the training set up to the task's symmetry: addition commutes, so a problem
`a+b` and `b+a` have one canonical form (the ordered pair); `--exclude` drops every row whose canonical form occurs
in the given files (and rows repeat within a file never).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from emdm_core.errors import ConfigError

DIGITS = 32  # the shipped task: prompt 66 tokens, answer 33 tokens


def canonical(a: str, b: str) -> tuple[str, str]:
    """The canonical form of `a+b` under commutation (the smaller operand first)."""
    return (a, b) if a <= b else (b, a)


def problem(a: str, b: str) -> dict:
    """One row: the prompt `a+b=`, the fixed-width sum as the response, and the operands."""
    total = str(int(a) + int(b)).zfill(len(a) + 1)
    return {"prompt": f"{a}+{b}=", "response": total, "a": a, "b": b}


def plant_carry_chains(block: np.ndarray, rng: np.random.Generator, lengths: tuple[int, int]) -> None:
    """In place, per problem [2, digits]: a run of places where a_k + b_k = 9 (length drawn from `lengths`, inclusive),
    and at the place just below it a digit pair that makes a carry (sum >= 10) or not (sum <= 8), half each: the
    run's sum digits are all 0 or all 9 depending on one pair up to 24 places away (the hard case of addition)."""
    rows, _, digits = block.shape
    low, high = lengths
    for row in range(rows):  # per problem, not per token
        length = int(rng.integers(low, high + 1))
        start = int(rng.integers(0, digits - length))  # the run occupies [start, start + length); place below it
        a = rng.integers(0, 10, size=length)
        block[row, 0, start:start + length], block[row, 1, start:start + length] = a, 9 - a
        below = start + length
        if rng.random() < 0.5:
            x = int(rng.integers(1, 10)); y = int(rng.integers(10 - x, 10))  # noqa: E702  carry
        else:
            x = int(rng.integers(0, 9)); y = int(rng.integers(0, 9 - x))  # noqa: E702  no carry (sum <= 8)
        block[row, 0, below], block[row, 1, below] = x, y


def draw(n: int, seed: int, digits: int = DIGITS, exclude: Iterable[tuple[str, str]] = (),
         sparse_fraction: float = 0.0, chains: tuple[int, int] | None = None) -> Iterator[dict]:
    """`n` distinct problems of `digits`-digit operands from `seed`, none whose canonical form is in `exclude`.

    `sparse_fraction` (training sets only): that share of the rows gets a zero rate z ~ U(0, 1) and each operand
    digit becomes 0 with probability z. Why: with uniform digits, a sum digit (a_k + b_k + c) mod 10 is
    independent of a_k alone and of b_k alone, so a model at initialisation gets no first-order signal telling it
    where to attend (the XOR-like plateau: 1,000 steps of the recipe at chance on every digit); where one operand
    is mostly zeros, the sum digit is the other operand's digit, a copy a model finds quickly."""
    if chains and not (1 <= chains[0] <= chains[1] <= digits - 1):
        raise ConfigError(f"--carry-chains LO,HI must satisfy 1 <= LO <= HI <= digits - 1 (got {chains})")
    if not 0.0 <= sparse_fraction <= 1.0:
        raise ConfigError(f"--sparse-fraction must be in [0, 1] (got {sparse_fraction})")
    if n < 0 or digits < 1:
        raise ConfigError(f"--n must be >= 0 and --digits >= 1 (got n={n}, digits={digits})")
    seen = set(exclude)
    distinct = 10 ** digits * (10 ** digits + 1) // 2  # ordered pairs up to commutation
    if n + len(seen) > distinct:
        raise ConfigError(f"{digits}-digit operands give only {distinct:,} distinct problems up to a+b = b+a, fewer "
                          f"than --n {n:,} plus {len(seen):,} excluded; ask for fewer or use more --digits")
    rng = np.random.default_rng(seed)
    produced = 0
    while produced < n:
        block = rng.integers(0, 10, size=(max(64, n - produced), 2, digits), dtype=np.int8)
        if sparse_fraction:
            sparse = rng.random(len(block)) < sparse_fraction
            zero_rate = rng.random(len(block))[:, None, None]
            block[sparse[:, None, None] & (rng.random(block.shape) < zero_rate)] = 0
        if chains:
            plant_carry_chains(block, rng, chains)
        for pair in block:
            a, b = ("".join(map(str, row)) for row in pair)
            key = canonical(a, b)
            if key in seen:
                continue
            seen.add(key)
            yield problem(a, b)
            produced += 1
            if produced == n:
                return


def read_canonical(paths: Iterable[str | Path]) -> set[tuple[str, str]]:
    """The canonical forms of the problems in JSONL files (rows with `a` and `b`, or a prompt `a+b=`)."""
    forms = set()
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"--exclude file {path} does not exist; pass files written by this generator")
        with path.open() as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    a, b = (row["a"], row["b"]) if "a" in row else row["prompt"].rstrip("=").split("+")
                    forms.add(canonical(a, b))
    return forms


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m studies.addition.generate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, required=True, help="number of problems")
    ap.add_argument("--seed", type=int, required=True, help="seed of the draw (training and test sets use different "
                    "seeds; the committed test set is seed 1000, the training set seed 1)")
    ap.add_argument("--digits", type=int, default=DIGITS, help=f"digits per operand (default {DIGITS})")
    ap.add_argument("--out", required=True, help="JSONL file to write")
    ap.add_argument("--exclude", nargs="*", default=[],
                    help="JSONL files whose problems (up to a+b = b+a) are left out")
    ap.add_argument("--carry-chains", help="LO,HI: plant in every problem a run of LO..HI places whose digits sum to "
                    "9, fed a carry or not by the place below (the test set addition_32_chains: 8,24)")
    ap.add_argument("--sparse-fraction", type=float, default=0.0, help="training sets: the share of rows whose operand "
                    "digits are zeroed at a random rate (a first-order learning signal; test sets use 0, the default)")
    args = ap.parse_args(argv)
    try:
        exclude = read_canonical(args.exclude)
        chains = tuple(int(v) for v in args.carry_chains.split(",")) if args.carry_chains else None
        if chains is not None and len(chains) != 2:
            raise ConfigError(f"--carry-chains takes LO,HI (got {args.carry_chains})")
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w") as f:
            for i, row in enumerate(draw(args.n, args.seed, args.digits, exclude, args.sparse_fraction, chains), 1):
                f.write(json.dumps(row) + "\n")
                if i % 50000 == 0:
                    print(f"generate: {i:,} / {args.n:,} problems", file=sys.stderr, flush=True)
    except ConfigError as err:
        raise SystemExit(f"error: {err}")
    print(f"generate: wrote {args.n:,} problems of {args.digits}+{args.digits} digits (seed {args.seed}) to {out}"
          + (f", excluding {len(exclude):,} problems of {len(args.exclude)} file(s)" if args.exclude else ""),
          file=sys.stderr)


if __name__ == "__main__":
    main()
