"""`ftui compare RUN RUN [...]`: runs side by side.

    ftui compare RUN RUN [...] [--x step|tokens|time] [--json] [--points N] [--app]

Prints each run's final and best numbers, each metric at a few shared x positions (the axis
chosen with --x), and the spec fields that differ; --json prints the aligned series too;
--app opens the compare screen (charts). Bad input (an unknown run, one run) is one message
and exit code 2 (`FtuiError`).
"""

from __future__ import annotations

import argparse
from typing import Any

from tui.cli.output import emit_json

AXES = ("step", "tokens", "time")  # engine.monitor.compare.AXES (kept import-free here)


def add_compare_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "compare",
        help="compare runs: loss, eval loss, learning rate, tokens/s and spec differences",
        description="Line up two or more runs on steps, tokens seen or training time (time "
        "a run spent stopped is not counted; a resumed run's abandoned steps are dropped): "
        "final and best metrics, each metric at shared x positions, and the spec fields that "
        "differ.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run ids, unique prefixes or paths")
    parser.add_argument(
        "--x", choices=AXES, default="step", help="the x axis: step (default), tokens or time"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--points", type=int, default=400, help="at most this many points per series (JSON)"
    )
    parser.add_argument("--app", action="store_true", help="open the compare screen (charts)")
    parser.set_defaults(handler=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    from engine.errors import FtuiError
    from engine.monitor.compare import check_runs, compare_runs
    from engine.run.rundir import find_run

    if args.points < 2:
        raise FtuiError(f"--points {args.points} is too few", "give 2 or more (default 400)")
    runs = [find_run(ref) for ref in args.runs]
    check_runs(runs)
    if args.app:
        from engine.machine.hardware import make_backend
        from tui.app import FtuiApp

        FtuiApp(backend=make_backend(None), compare=[r.run_id for r in runs], axis=args.x).run()
        return 0
    comparison = compare_runs(runs, args.x, args.points)
    if args.json:
        emit_json(comparison.to_dict())
        return 0
    from rich.console import Console

    from tui.cli.render_compare import print_comparison

    print_comparison(comparison, Console())
    return 0
