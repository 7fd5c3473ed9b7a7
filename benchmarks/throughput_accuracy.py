"""The speed model against measured runs: the error table of docs/estimator.md.

Usage: python benchmarks/throughput_accuracy.py [--holdout]

Prints markdown: predicted vs measured job tokens/s on the comparable reference rows (the
same rows and code as tests/engine/test_throughput_accuracy.py), split by source, GPU, method
and sharding, the worst subgroups, the rows of other stacks (not fitted: bounds), and with
--holdout the out-of-sample error (constants refitted with each source, then each model, left
out).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.plan.reference import (  # noqa: E402
    SpeedComparison,
    compare_throughput,
    speed_groups,
    speed_summary,
    throughput_rows,
)

CSV = ROOT / "tests" / "data" / "reference" / "throughput_measured.csv"


def _line(name: str, comparisons: list[SpeedComparison]) -> str:
    s = speed_summary(comparisons)
    return (
        f"| {name} | {s['rows']:.0f} | {s['median']:.1%} | {s['p90']:.1%} | {s['max']:.1%} "
        f"| {s['bias']:+.1%} |"
    )


def table(title: str, groups: dict[str, list[SpeedComparison]]) -> None:
    print(f"\n**{title}**\n")
    print("| group | rows | median abs error | p90 | max | median signed |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in sorted(groups):
        print(_line(name, groups[name]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--holdout", action="store_true")
    args = parser.parse_args()
    rows, _ = throughput_rows(CSV)
    comparable = [r for r in rows if r.comparable]
    comparisons = compare_throughput(comparable)
    s = speed_summary(comparisons)
    print(
        f"comparable rows: {s['rows']:.0f} · median |error| {s['median']:.1%} · "
        f"p90 {s['p90']:.1%} · max {s['max']:.1%} · median signed {s['bias']:+.1%}"
    )
    subgroups: list[tuple[str, list[SpeedComparison]]] = []
    for key in ("source", "gpu", "method", "sharding"):
        groups: dict[str, list[SpeedComparison]] = defaultdict(list)
        for c in comparisons:
            groups[speed_groups(c.row)[key]].append(c)
        table(f"by {key}", groups)
        subgroups += [(f"{key}: {name}", g) for name, g in groups.items() if len(g) >= 2]
    worst = sorted(subgroups, key=lambda item: -speed_summary(item[1])["median"])[:3]
    table("worst subgroups (two rows or more)", dict(worst))
    others: dict[str, list[SpeedComparison]] = defaultdict(list)
    for c in compare_throughput([r for r in rows if not r.comparable]):
        label = c.row.stack if c.row.stack != "HF Trainer" else f"HF Trainer, {c.row.why_not}"
        others[label].append(c)
    table("not comparable, not fitted (other stacks and kernels: bounds, not checks)", others)
    if args.holdout:
        from fit_throughput import describe, fit, log_errors  # the fitting script beside this

        from engine.plan.throughput import DEFAULT_THROUGHPUT_CALIBRATION

        print("\n**out of sample** (constants refitted without the group, then checked on it)\n")
        for by in ("stack", "model"):
            held: list[float] = []
            for group in sorted({getattr(r, by) for r in comparable}):
                train = [r for r in comparable if getattr(r, by) != group]
                test = [r for r in comparable if getattr(r, by) == group]
                held += log_errors(test, fit(train, DEFAULT_THROUGHPUT_CALIBRATION))
            print(f"- each {'source' if by == 'stack' else by} held out in turn: {describe(held)}")


if __name__ == "__main__":
    main()
