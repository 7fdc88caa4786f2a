"""Accuracy against forward passes: each decoding setting paired with a baseline on the same items.

`frontier_rows` turns per-item 0/1 outcomes and per-setting costs into one row per setting: accuracy with its 95%
interval, mean forward passes per item (full / cached), tokens per forward, wall time relative to the baseline,
and against the baseline on the same items the paired difference with its 95% interval, the exact McNemar p-value
and the Holm-adjusted p-value over the whole family of comparisons. `pareto`, `markdown` and `plot` report them.
Used by `benchmarks/accuracy_vs_passes.py` (one run over a grid) and `benchmarks/decoder_frontier.py` (an
ablation folder).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from emdm_core.stats import format_p, holm, paired_counts

Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a rate (well behaved at 0% and 100%, where the Wald interval collapses)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def frontier_rows(outcomes: Mapping[str, Mapping[int, float]], costs: Mapping[str, Mapping[str, Any]],
                  baseline: str) -> list[dict[str, Any]]:
    """One row per setting (sorted by passes). `outcomes[label][item]` is a 0/1 outcome; `costs[label]` holds
    `passes` (per item) and optionally `full_passes`, `cached_passes`, `tokens_per_forward`, `time_ratio`, and any
    other columns to carry (e.g. `group`). Items are paired with the baseline's; Holm adjusts over every comparison."""
    if baseline not in outcomes:
        raise ValueError(f"baseline {baseline!r} has no outcomes; settings: {', '.join(outcomes)}")
    base = outcomes[baseline]
    rows = []
    for label, items in outcomes.items():
        ids = sorted(set(items) & set(base))
        if not ids:
            continue
        a = [int(items[i]) for i in ids]
        counts = paired_counts(a, [int(base[i]) for i in ids])
        low, high = wilson(sum(a), len(a))
        diff, diff_low, diff_high = counts.difference()
        is_base = label == baseline
        rows.append({**costs.get(label, {}), "point": label, "n": len(ids), "accuracy": sum(a) / len(a),
                     "acc_low": low, "acc_high": high, "diff": diff, "diff_low": diff_low, "diff_high": diff_high,
                     "only_point": counts.only_a, "only_baseline": counts.only_b,
                     "p": None if is_base else counts.p_value, "baseline": is_base})
    compared = [r for r in rows if not r["baseline"]]
    for row, adjusted in zip(compared, holm([r["p"] for r in compared])):
        row["p_holm"] = adjusted
    return sorted(rows, key=lambda r: (float(r["passes"]), -r["accuracy"]))


def pareto(rows: Sequence[dict]) -> list[dict]:
    """The rows no other row beats on both accuracy (higher) and passes (fewer)."""
    return [r for r in rows if not any(o["accuracy"] >= r["accuracy"] and o["passes"] <= r["passes"] and
                                       (o["accuracy"], o["passes"]) != (r["accuracy"], r["passes"]) for o in rows)]


def _number(value: Any, spec: str) -> str:
    return "-" if value is None or value == "" else format(float(value), spec)


def markdown(rows: Sequence[dict], baseline: str, metric: str, title: str, timed: bool = False) -> str:
    """The table: per setting accuracy [95% CI], passes (full / cached), tokens per forward, (time vs baseline),
    the paired difference [95% CI], McNemar p, Holm p and whether it lies on the frontier."""
    front = {r["point"] for r in pareto(rows)}
    lines = [f"## {title}", "", f"Baseline: `{baseline}`. Paired on the same items; McNemar p exact, Holm p adjusted "
             f"over the {sum(not r['baseline'] for r in rows)} comparisons with the baseline. Frontier: no other "
             f"setting is both at least as accurate and at most as many passes.", ""]
    head = (f"| setting | n | {metric} [95% CI] | passes / item | full / cached | tokens / forward |"
            + (" time vs baseline |" if timed else "") + " vs baseline [95% CI] | McNemar p | Holm p | frontier |")
    lines += [head, "|" + "|".join(["---"] + ["---:"] * (head.count("|") - 3) + [":---:"]) + "|"]
    for r in rows:
        split = (f"{_number(r.get('full_passes'), '.1f')} / {_number(r.get('cached_passes'), '.1f')}"
                 if r.get("full_passes") is not None else "-")
        versus = "baseline" if r["baseline"] else f"{r['diff']:+.3f} [{r['diff_low']:+.3f}, {r['diff_high']:+.3f}]"
        timing = f" {_number(r.get('time_ratio'), '.2f')}x |" if timed else ""
        lines.append(f"| `{r['point']}` | {r['n']} | {r['accuracy']:.3f} [{r['acc_low']:.3f}, {r['acc_high']:.3f}] | "
                     f"{float(r['passes']):.2f} | {split} | {_number(r.get('tokens_per_forward'), '.2f')} |{timing} "
                     f"{versus} | {format_p(r['p'])} | {format_p(r.get('p_holm'))} | "
                     f"{'yes' if r['point'] in front else ''} |")
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict], path: Path, metric: str, title: str, group_key: str | None = None) -> None:
    """Accuracy (with its interval) against mean passes per item, log x, the frontier dashed; colours by
    `group_key` when given."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.6))
    groups = sorted({str(r.get(group_key, "")) for r in rows}) if group_key else [""]
    colours = {g: plt.get_cmap("tab10")(i % 10) for i, g in enumerate(groups)}
    labelled = set()
    for r in rows:
        group = str(r.get(group_key, "")) if group_key else ""
        colour = "black" if r["baseline"] else colours[group]
        name = "baseline" if r["baseline"] else (group or None)
        ax.errorbar(float(r["passes"]), r["accuracy"],
                    yerr=[[r["accuracy"] - r["acc_low"]], [r["acc_high"] - r["accuracy"]]], fmt="o", color=colour,
                    capsize=2, markersize=4, label=name if name and name not in labelled else None)
        labelled.add(name)
        ax.annotate(r["point"], (float(r["passes"]), r["accuracy"]), fontsize=5.5, xytext=(3, 2),
                    textcoords="offset points")
    front = sorted(pareto(rows), key=lambda r: float(r["passes"]))
    ax.plot([float(r["passes"]) for r in front], [r["accuracy"] for r in front], "--", color="tab:red",
            label="frontier")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("mean forward passes per item (log)")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
