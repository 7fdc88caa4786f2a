"""Paired statistics for comparing two decoders (or two trainings) on the same items.

- `paired_counts(a, b)`: both / only-A / only-B / neither counts of two 0/1 outcome lists over the same items;
- `mcnemar_exact(only_a, only_b)`: the exact two-sided McNemar p-value (binomial test on the discordant pairs);
- `paired_difference_ci(...)`: the difference of the two success rates with a 95% Wald interval for paired data;
- `holm(p_values)`: Holm's step-down adjustment of a family of p-values (family-wise error control).
- `unpaired_difference_ci(...)`: two rates on different items (a fresh held-out set against the committed one);
- `format_p(p)`: a p-value as the reports print it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence


@dataclass(frozen=True)
class PairedCounts:
    """How two 0/1 outcome lists over the same items agree."""

    both: int
    only_a: int
    only_b: int
    neither: int

    @property
    def n(self) -> int:
        return self.both + self.only_a + self.only_b + self.neither

    @property
    def p_value(self) -> float:
        """Exact two-sided McNemar p-value."""
        return mcnemar_exact(self.only_a, self.only_b)

    def difference(self) -> tuple[float, float, float]:
        """(rate A - rate B, 95% CI low, high)."""
        return paired_difference_ci(self.only_a, self.only_b, self.n)


def paired_counts(a: Sequence[float], b: Sequence[float]) -> PairedCounts:
    """Counts of two outcome lists (1 = success, 0 = failure) over the same items, in the same order."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need the same items: {len(a)} vs {len(b)}")
    bad = [v for v in (*a, *b) if v not in (0, 1)]
    if bad:
        raise ValueError(f"paired outcomes must be 0 or 1 (got {bad[0]!r})")
    both = sum(1 for x, y in zip(a, b) if x and y)
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    return PairedCounts(both, only_a, only_b, len(a) - both - only_a - only_b)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Exact McNemar test: p = min(1, 2 P[X <= min(b, c)]) for X ~ Binomial(b + c, 1/2); 1 when no pair differs.

    Computed in exact rational arithmetic (no underflow for thousands of discordant pairs)."""
    if only_a < 0 or only_b < 0:
        raise ValueError("discordant counts must be >= 0")
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2 ** n)))


def paired_difference_ci(only_a: int, only_b: int, n: int, z: float = 1.959963984540054) -> tuple[float, float,
                                                                                                    float]:
    """Difference of two paired success rates, (b - c) / n, with its Wald interval: the variance of the mean of
    the per-item differences d in {-1, 0, 1} is ((b + c) / n - diff^2) / n."""
    if n <= 0:
        raise ValueError("n must be > 0")
    diff = (only_a - only_b) / n
    se = math.sqrt(max((only_a + only_b) / n - diff * diff, 0.0) / n)
    return diff, diff - z * se, diff + z * se


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order: the i-th smallest p times (m - i), made monotone and capped at
    1. A comparison is significant at level a for the whole family when its adjusted p < a."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        adjusted[i] = running
    return adjusted


def unpaired_difference_ci(successes_a: int, n_a: int, successes_b: int, n_b: int,
                           z: float = 1.959963984540054) -> tuple[float, float, float]:
    """Difference of two success rates on *different* items (e.g. a fresh held-out set against the committed
    one), rate_a - rate_b, with its Wald 95% interval: the variances of the two rates add."""
    if n_a <= 0 or n_b <= 0:
        raise ValueError("both samples need at least one item")
    a, b = successes_a / n_a, successes_b / n_b
    se = math.sqrt(a * (1 - a) / n_a + b * (1 - b) / n_b)
    return a - b, a - b - z * se, a - b + z * se


def format_p(value: float | None) -> str:
    """A p-value for a table: '-' for none, 2 significant digits below 0.001, else 3 decimals."""
    return "-" if value is None else (f"{value:.2g}" if value < 0.001 else f"{value:.3f}")
