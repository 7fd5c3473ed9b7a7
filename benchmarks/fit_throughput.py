"""Fit the speed model's constants on the measured reference runs, and check them out of sample.

Usage: python benchmarks/fit_throughput.py [--holdout source|model]

The fit minimises the mean absolute log error of predicted vs measured job tokens/s over the
comparable rows (engine.plan.reference.throughput_rows), over the five constants of
engine.plan.throughput.ThroughputCalibration, with a plain Nelder-Mead in log space (no SciPy).
It prints the constants, the in-sample errors, the residual band (10th/90th percentile of
measured/predicted) and, with --holdout, each group's error when the constants are fitted
without it. Paste the constants into ThroughputCalibration and the band into SPEED_BAND.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.plan.reference import ThroughputRow, throughput_rows  # noqa: E402
from engine.plan.throughput import (  # noqa: E402
    DEFAULT_THROUGHPUT_CALIBRATION,
    ThroughputCalibration,
    tokens_per_s,
)
from profiles import find_gpu_profile  # noqa: E402

CSV = ROOT / "tests" / "data" / "reference" / "throughput_measured.csv"
NAMES = [f.name for f in fields(ThroughputCalibration)]


def comparable() -> list[ThroughputRow]:
    rows, _ = throughput_rows(CSV)
    return [r for r in rows if r.comparable]


def log_errors(rows: Sequence[ThroughputRow], cal: ThroughputCalibration) -> list[float]:
    out = []
    for row in rows:
        gpu = find_gpu_profile(row.gpu)
        assert gpu is not None, row.gpu
        out.append(
            math.log(tokens_per_s(row.arch, row.config, gpu, cal) / row.measured_tokens_per_s)
        )
    return out


def _calibration(x: Sequence[float]) -> ThroughputCalibration:
    return ThroughputCalibration(**{n: math.exp(v) for n, v in zip(NAMES, x, strict=True)})


def nelder_mead(
    f: Callable[[list[float]], float], x0: list[float], iters: int = 1500
) -> list[float]:
    n = len(x0)
    simplex = [list(x0)] + [
        [v + (0.5 if i == j else 0.0) for j, v in enumerate(x0)] for i in range(n)
    ]
    values = [f(p) for p in simplex]
    for _ in range(iters):
        order = sorted(range(n + 1), key=values.__getitem__)
        simplex, values = [simplex[i] for i in order], [values[i] for i in order]
        if values[-1] - values[0] < 1e-9:
            break
        centroid = [sum(p[j] for p in simplex[:-1]) / n for j in range(n)]
        worst = simplex[-1]

        def toward(
            t: float, worst: list[float] = worst, centroid: list[float] = centroid
        ) -> list[float]:
            return [c + t * (w - c) for c, w in zip(centroid, worst, strict=True)]

        reflected = toward(-1.0)
        fr = f(reflected)
        if fr < values[0]:
            expanded = toward(-2.0)
            fe = f(expanded)
            simplex[-1], values[-1] = (expanded, fe) if fe < fr else (reflected, fr)
        elif fr < values[-2]:
            simplex[-1], values[-1] = reflected, fr
        else:
            contracted = toward(0.5)
            fc = f(contracted)
            if fc < values[-1]:
                simplex[-1], values[-1] = contracted, fc
            else:
                best = simplex[0]
                simplex = [best] + [
                    [b + 0.5 * (p - b) for b, p in zip(best, q, strict=True)] for q in simplex[1:]
                ]
                values = [values[0]] + [f(p) for p in simplex[1:]]
    return simplex[min(range(n + 1), key=values.__getitem__)]


def fit(rows: Sequence[ThroughputRow], start: ThroughputCalibration) -> ThroughputCalibration:
    def loss(x: list[float]) -> float:
        try:
            return statistics.fmean(abs(e) for e in log_errors(rows, _calibration(x)))
        except (ZeroDivisionError, OverflowError, ValueError):
            return 1e9

    x = [math.log(getattr(start, n)) for n in NAMES]
    for _ in range(3):  # restarts shake the simplex out of flat spots
        x = nelder_mead(loss, x)
    return _calibration(x)


def describe(errors: Sequence[float]) -> str:
    rel = sorted(abs(math.exp(e) - 1) for e in errors)
    p90 = rel[min(len(rel) - 1, math.ceil(0.9 * len(rel)) - 1)]
    return (
        f"{len(rel)} rows: median |error| {statistics.median(rel):.1%}, "
        f"p90 {p90:.1%}, max {rel[-1]:.1%}"
    )


def quantile(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--holdout", choices=("source", "model"), default=None)
    args = parser.parse_args()
    rows = comparable()
    cal = fit(rows, DEFAULT_THROUGHPUT_CALIBRATION)
    print("fitted constants (ThroughputCalibration):")
    for name in NAMES:
        print(f"  {name} = {getattr(cal, name):.4g}")
    errors = log_errors(rows, cal)
    print(f"in sample: {describe(errors)}")
    ratios = [math.exp(-e) for e in errors]  # measured / predicted
    low, high = quantile(ratios, 0.1), quantile(ratios, 0.9)
    print(f"band (measured/predicted p10, p90): {low:.2f}, {high:.2f}")
    if args.holdout:
        key = (lambda r: r.stack) if args.holdout == "source" else (lambda r: r.model)
        held: list[float] = []
        for group in sorted({key(r) for r in rows}):
            train = [r for r in rows if key(r) != group]
            test = [r for r in rows if key(r) == group]
            sub = fit(train, cal)
            errs = log_errors(test, sub)
            held += errs
            print(f"  held out {group}: {describe(errs)}")
        print(f"out of sample (each {args.holdout} held out in turn): {describe(held)}")
    _ = replace  # (kept for callers who tweak one constant by hand)


if __name__ == "__main__":
    main()
