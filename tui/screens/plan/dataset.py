"""Pick a dataset: a path; on submit `check_dataset` runs in a thread worker and the panel
shows the format, counts, the token-length histogram and the truncation share at the
current sequence length. Lengths are the script-aware estimate of `engine.data.tokens` (its
p99 picks the sequence length, its total the ETA), shown with the total's range across
tokenizers. Errors become one message, never a crash."""

from __future__ import annotations

from pathlib import Path

from rich.console import Group, RenderableType
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, Static
from textual.worker import get_current_worker

from engine.data import DataReport, check_dataset
from engine.errors import FtuiError

HIST_WIDTH = 22


def render_report(report: DataReport) -> RenderableType:
    """Counts, length percentiles, histogram and truncation of a checked dataset."""
    lines: list[RenderableType] = []
    head = Text()
    head.append(f"{report.format}", "bold")
    head.append(f" · {report.records:,} records: {report.valid:,} valid")
    if report.invalid:
        head.append(f", {len(report.invalid):,} invalid", "bold red")
    head.append(f", {report.empty} empty, {report.duplicates} duplicate")
    lines.append(head)
    if report.lengths:
        how = "estimated from character classes" if report.estimated else "measured"
        lengths = report.lengths
        total = f"{lengths.total:,} in all"
        if report.estimated and report.total_range:
            total += f" ({report.total_range[0]:,}–{report.total_range[1]:,} by tokenizer)"
        lines.append(
            Text(
                f"tokens ({how}): p50 {lengths.p50:,} · p99 {lengths.p99:,} · max "
                f"{lengths.max:,} · {total}"
            )
        )
    if report.histogram:
        top = max(bucket["count"] for bucket in report.histogram) or 1
        for bucket in report.histogram:
            row = Text(f"{bucket['lo']:>6,}–{bucket['hi']:<6,} ", style="dim")
            cells = round(bucket["count"] / top * HIST_WIDTH)
            beyond = report.seq_len is not None and bucket["lo"] >= report.seq_len
            row.append("█" * cells, style="red" if beyond else "green")
            row.append(f" {bucket['count']:,}")
            lines.append(row)
    if report.truncated_share is not None:
        share = Text(
            f"truncated at seq len {report.seq_len:,}: {report.truncated_share:.1%} "
            f"({report.truncated:,} records)"
        )
        if report.truncated:
            share.stylize("yellow")
        lines.append(share)
    for item in report.invalid[:3]:
        lines.append(Text(f"✗ {item.location}: {item.reason}", style="red"))
    if len(report.invalid) > 3:
        lines.append(Text(f"… and {len(report.invalid) - 3} more invalid records", style="red"))
    return Group(*lines)


class DatasetPanel(Vertical):
    """Posts `DatasetPanel.Checked` after each check (the screen keeps the report)."""

    class Checked(Message):
        def __init__(self, path: str, report: DataReport | None, error: str | None) -> None:
            super().__init__()
            self.path = path
            self.report = report
            self.error = error

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.seq_len: int | None = None
        self.checking = False
        self.checks = 0  # finished checks (tests wait on it)

    def compose(self) -> ComposeResult:
        yield Input(
            placeholder="dataset file or folder; enter checks it",
            id="data-path",
            compact=True,
        )
        yield Static(
            "[dim]JSON, JSONL, CSV or Parquet. Until one is checked, plans assume 10M tokens "
            "per epoch.[/dim]",
            id="data-report",
        )

    @property
    def path(self) -> str:
        return self.query_one("#data-path", Input).value.strip()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "data-path":
            event.stop()
            self.check()

    def check(self) -> None:
        """Check the typed path at the current sequence length (in a worker)."""
        path = self.path
        report = self.query_one("#data-report", Static)
        if not path:
            report.update(Text("Type the path of a dataset file or folder.", style="yellow"))
            return
        self.checking = True
        report.update(Text(f"checking {path}…", style="dim"))
        self._check_worker(path, self.seq_len)

    @work(thread=True, exclusive=True, group="dataset")
    def _check_worker(self, path: str, seq_len: int | None) -> None:
        worker = get_current_worker()
        report: DataReport | None = None
        error: str | None = None
        try:
            report = check_dataset(Path(path).expanduser(), seq_len=seq_len)
        except FtuiError as exc:
            error = str(exc)
        except Exception as exc:  # whatever the file holds, the screen must survive it
            error = f"cannot check {path}: {type(exc).__name__}: {exc}"
        if not worker.is_cancelled:
            self.post_message(self.Checked(path, report, error))

    def on_dataset_panel_checked(self, message: DatasetPanel.Checked) -> None:
        # Shown here, then the message bubbles on to the screen.
        self.checking = False
        self.checks += 1
        out = self.query_one("#data-report", Static)
        if message.error is not None:
            out.update(Text(message.error, style="bold red"))
            self.set_class(True, "-invalid")
            return
        assert message.report is not None
        out.update(render_report(message.report))
        self.set_class(not message.report.ok or not message.report.valid, "-invalid")
