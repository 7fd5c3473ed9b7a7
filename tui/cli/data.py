"""`ftui data check FILE`: format, valid/invalid records, token lengths, as Rich or JSON.

Exit codes: 0 when every record is valid, 1 when some are invalid, 2 when the file is unusable
(or another user error), printed by the CLI's main as `ftui: error: ...` + `  fix: ...`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from engine.data import FORMAT_ALIASES, FORMATS
from engine.errors import FtuiError
from tui.cli.output import emit_json

MAX_LISTED_INVALID = 50
_BAR_WIDTH = 40


def add_data_parser(sub: Any) -> argparse.ArgumentParser:
    data = sub.add_parser(
        "data",
        help="check a training dataset: format, invalid records, token lengths",
        description="Inspect training data before you launch a run.",
    )
    data.set_defaults(handler=_usage(data))
    actions = data.add_subparsers(title="data commands", metavar="ACTION")
    check = actions.add_parser(
        "check",
        help="validate a dataset and measure its token lengths",
        description="Reads a JSON, JSONL, CSV or Parquet file (or a folder of them), recognises "
        "its format (Alpaca, ShareGPT, OpenAI messages, plain text, preference pairs), lists "
        "every invalid record with its line and reason, counts empty and duplicate samples, "
        "and reports token-length percentiles. Exit code 0: all valid; 1: some invalid; "
        "2: the file is unusable.",
    )
    check.add_argument("file", type=Path, metavar="FILE", help="data file or folder")
    check.add_argument(
        "--format",
        dest="fmt",
        default="auto",
        choices=("auto", *FORMATS, *FORMAT_ALIASES),
        help="force a format instead of detecting it (default: auto)",
    )
    check.add_argument(
        "--model",
        help="measure lengths with this model's tokenizer and chat template (a local dir, a "
        "model in the HF cache, or a profile whose tokenizer is cached); default: estimate",
    )
    check.add_argument("--seq-len", type=int, help="report the share of samples longer than this")
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.set_defaults(handler=cmd_data_check)
    return data


def _usage(parser: argparse.ArgumentParser) -> Any:
    def handler(_args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return handler


def cmd_data_check(args: argparse.Namespace) -> int:
    from engine.data import check_dataset, load_tokenizer

    if args.seq_len is not None and args.seq_len < 1:
        raise FtuiError(f"--seq-len {args.seq_len} is not positive", "use e.g. --seq-len 2048")
    tokenizer = None
    note = None
    if args.model:
        tokenizer, note = load_tokenizer(args.model)
    report = check_dataset(args.file, fmt=args.fmt, tokenizer=tokenizer, seq_len=args.seq_len)
    if note:
        report.notes.insert(0, note)
    if args.json:
        data = report.to_dict()
        data["model"] = args.model
        emit_json(data, ensure_ascii=False)
    else:
        print_data_report(report)
    return 0 if report.ok else 1


def print_data_report(report: Any, console: Any = None) -> None:
    """A readable report of an `engine.data.DataReport`."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    where = report.path if len(report.files) <= 1 else f"{report.path} ({len(report.files)} files)"
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold", no_wrap=True)
    head.add_column()
    head.add_row("dataset", Text(where))
    head.add_row("format", Text(report.format, style="cyan"))
    counts = Text(f"{report.records} records · ")
    counts.append(f"{report.valid} valid", style="green")
    counts.append(" · ")
    counts.append(f"{len(report.invalid)} invalid", style="red" if report.invalid else "green")
    counts.append(f" · {report.empty} empty · {report.duplicates} duplicates")
    if report.duplicates:
        counts.append(" (repeated samples weigh more in training)", style="yellow")
    head.add_row("records", counts)
    if report.lengths is not None:
        lengths = report.lengths
        line = Text(
            f"p50 {lengths.p50} · p90 {lengths.p90} · p95 {lengths.p95} · p99 {lengths.p99} · "
            f"max {lengths.max} · mean {lengths.mean:.0f}"
        )
        if report.estimated:
            line.append("  (estimated from character classes)", style="yellow")
        else:
            template = "chat template" if report.template == "chat" else "fallback template"
            line.append(f"  ({report.tokenizer}, {template})", style="dim")
        head.add_row("tokens", line)
        total = Text(f"{lengths.total:,}")
        if report.estimated and report.total_range:
            low, high = report.total_range
            total.append(f"  (estimate; {low:,}-{high:,} across tokenizers)", style="yellow")
        head.add_row("total", total)
        if report.longest:
            spot = _location(report.longest, report)
            head.add_row("longest", Text(f"{report.longest['tokens']} tokens at {spot}"))
    if report.truncated_share is not None:
        share = Text(f"{report.truncated_share:.1%} of samples longer than {report.seq_len}")
        if report.truncated:
            share.append(f" ({report.truncated} truncated)", style="yellow")
        head.add_row("truncated", share)
    elif report.lengths is not None:
        head.add_row("truncated", Text("pass --seq-len N to see how many samples exceed it"))
    console.print(head)

    if report.histogram:
        console.print(Text("\ntoken lengths", style="bold"))
        top = max(bucket["count"] for bucket in report.histogram) or 1
        hist = Table.grid(padding=(0, 1))
        hist.add_column(justify="right", no_wrap=True)
        hist.add_column(no_wrap=True)
        hist.add_column(justify="right", no_wrap=True)
        for bucket in report.histogram:
            cells = round(bucket["count"] / top * _BAR_WIDTH)
            bar = Text("█" * cells, style="cyan")
            if bucket["count"] and not cells:
                bar = Text("▏", style="cyan")
            hist.add_row(f"{bucket['lo']}–{bucket['hi'] - 1}", bar, str(bucket["count"]))
        console.print(hist)

    if report.invalid:
        console.print(Text(f"\ninvalid records ({len(report.invalid)})", style="bold red"))
        table = Table.grid(padding=(0, 2))
        table.add_column(no_wrap=True, style="red")
        table.add_column()
        for item in report.invalid[:MAX_LISTED_INVALID]:
            table.add_row(_location(item.to_dict(), report), Text(item.reason))
        console.print(table)
        more = len(report.invalid) - MAX_LISTED_INVALID
        if more > 0:
            console.print(Text(f"… {more} more (--json lists every one)", style="dim"))

    if report.preference:
        console.print(Text("\n" + preference_line(report.preference)))

    if report.notes:
        console.print()
        for note in report.notes:
            console.print(Text(f"note: {note}", style="dim"))

    console.print()
    if report.invalid and not report.valid:
        console.print(
            Text(
                f"✗ none of the {report.records} records is valid: fix them (the reasons are "
                "above); there is nothing to train on",
                style="bold red",
            )
        )
    elif report.invalid:
        console.print(
            Text(
                f"✗ {len(report.invalid)} of {report.records} records are invalid: fix them, or "
                "train on the valid ones with --skip-invalid",
                style="bold red",
            )
        )
    else:
        console.print(Text(f"✓ all {report.records} records are valid", style="bold green"))


def _location(item: dict[str, Any], report: Any) -> str:
    spot = item.get("location") or (
        f"line {item['line']}" if item.get("line") is not None else f"row {item['row']}"
    )
    if len(report.files) > 1:
        spot = f"{item['file']} {spot}"
    return spot


def preference_line(summary: dict[str, Any]) -> str:
    """Pairs (or judged answers), identical pairs, long prompts, truncation of each side."""
    parts = []
    if "pairs" in summary:
        parts.append(f"{summary['pairs']} pairs, {summary['identical']} with chosen = rejected")
    if "desirable" in summary:
        parts.append(
            f"{summary['desirable']} desirable, {summary['undesirable']} undesirable answers"
        )
    if "long_prompts" in summary:
        parts.append(
            f"{summary['long_prompts']} prompts over {summary['max_prompt_len']} tokens (cut to "
            "their end)"
        )
    for side in ("chosen", "rejected", "completion"):
        share = summary.get(f"truncated_{side}_share")
        if share is not None:
            parts.append(f"{side} truncated at {summary['seq_len']}: {share:.0%}")
    return "preference: " + "; ".join(parts)
