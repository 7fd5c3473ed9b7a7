"""One exchange of a chat column: the prompt, and the answer streaming into a Markdown widget."""

from __future__ import annotations

import time

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Markdown, Static

from engine.chat import AnswerStats


class ChatPrompt(Static):
    """What the user asked."""

    def __init__(self, prompt: str) -> None:
        super().__init__(prompt, markup=False)
        self.prompt = prompt


class ChatAnswer(Vertical):
    """An answer: Markdown fed by a `MarkdownStream`, then a line with its measurements.

    The timestamps (perf_counter) are what the chat benchmark reads: the prompt was submitted,
    the first text reached the widget's stream, the last text was appended."""

    def __init__(self, variant: str) -> None:
        super().__init__()
        self.variant = variant
        self.submitted_at = time.perf_counter()
        self.first_text_at: float | None = None
        self.done_at: float | None = None
        self.stats: AnswerStats | None = None
        self.error: str | None = None
        self.text = ""

    def compose(self) -> ComposeResult:
        yield Static(self.variant, classes="chat-variant", markup=False)
        yield Markdown(classes="chat-markdown")
        yield Static("waiting…", classes="chat-stats", markup=False)

    @property
    def markdown(self) -> Markdown:
        return self.query_one(Markdown)

    def started(self) -> None:
        self.add_class("-streaming")
        self.query_one(".chat-stats", Static).update("generating…  (ctrl+x stops)")

    def finish(self, stats: AnswerStats | None, error: str | None = None) -> None:
        self.done_at = time.perf_counter()
        self.stats, self.error = stats, error
        self.remove_class("-streaming")
        self.set_class(bool(stats and stats.stopped), "-stopped")
        self.set_class(error is not None, "-error")
        line = stats.summary() if stats else ""
        if error:
            line = f"{line} · {error}" if line else error
        self.query_one(".chat-stats", Static).update(line or "stopped before it started")
