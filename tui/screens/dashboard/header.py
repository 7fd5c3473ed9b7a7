"""The top of the dashboard: run id and status, model and method, progress, ETA and cost, the
latest loss / learning rate / throughput."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, ProgressBar, Sparkline, Static

from engine.humanize import duration
from engine.run.cost import Cost, money
from tui.screens.dashboard.model import DashFrame, number
from tui.widgets.chart import compact

STATUS_CLASSES = ("-starting", "-running", "-stopping", "-completed", "-failed", "-stopped")


def status_label(frame: DashFrame) -> str:
    if frame.stalled:
        return "stalled"
    if frame.failure:
        return f"failed ({frame.failure})"
    return frame.status


def cost_text(cost: Cost | None, *, final: bool) -> str:
    """`$0.12 → $0.40 (plan $0.35)`: spent so far, the projection at the measured pace, the
    plan's; empty when the run has no price."""
    if cost is None or cost.spent_usd is None:
        return ""
    text = f"[b]{money(cost.spent_usd)}[/b]"
    if not final and cost.projected_usd is not None:
        text += f" → {money(cost.projected_usd)}"
    if cost.plan_usd is not None:
        text += f" (plan {money(cost.plan_usd)})"
    if cost.max_cost is not None:
        text += f" cap {money(cost.max_cost)}"
    return text


def progress_text(frame: DashFrame, cost: Cost | None = None) -> str:
    parts = []
    if frame.step is not None:
        total = f" / {frame.max_steps:,}" if frame.max_steps else ""
        parts.append(f"step {frame.step:,}{total}")
    else:
        parts.append("no step yet")
    if frame.epoch is not None:
        parts.append(f"epoch {frame.epoch:.2f}")
    if frame.status in ("completed", "failed", "stopped"):
        if frame.train_seconds:
            parts.append(f"trained {duration(frame.train_seconds)}")
    else:
        if frame.eta_seconds is not None:
            parts.append(f"ETA {duration(frame.eta_seconds)}")
        if frame.last_step_age is not None:
            parts.append(f"last step {duration(frame.last_step_age)} ago")
    money_text = cost_text(cost, final=frame.status in ("completed", "failed", "stopped"))
    if money_text:
        parts.append(money_text)
    return " · ".join(parts)


def metrics_text(frame: DashFrame) -> str:
    """The latest numbers; a preference run's are its accuracy and margin (the chosen and
    rejected rewards are on their chart), a pretrain run's add the perplexity."""
    if frame.preference:
        parts = [
            f"loss [b]{number(frame.loss)}[/b]",
            f"accuracy [b]{number(frame.accuracy, '.2f')}[/b]",
            f"margin [b]{number(frame.margin, '.3g')}[/b]",
        ]
    else:
        parts = [f"loss [b]{number(frame.loss)}[/b]", f"smoothed {number(frame.loss_smooth)}"]
        if frame.stage == "pretrain":
            parts.append(f"perplexity [b]{number(frame.perplexity, '.4g')}[/b]")
        parts.append(f"eval {number(frame.eval_loss)}")
    parts.append(f"lr {number(frame.lr, 'lr')}")
    parts.append(f"grad norm {number(frame.grad_norm, '.3g')}")
    return " · ".join(parts)


def throughput_text(frame: DashFrame) -> str:
    """What follows the tokens/s sparkline."""
    parts = [f"[b]{compact(frame.tokens_per_s)}[/b]"]
    planned, measured = frame.planned_tokens_per_s, frame.measured_tokens_per_s
    if planned:  # planned vs measured, side by side
        steady = f"measured {compact(measured)}" if measured else "measured …"
        versus = f" ({measured / planned - 1:+.0%})" if measured else ""
        parts.append(f"{steady} vs planned {compact(planned)}{versus}")
    parts.append(f"samples/s {number(frame.samples_per_s, '.3g')}")
    if frame.seconds_per_step is not None:
        parts.append(f"{frame.seconds_per_step:.2f} s/step")
    parts.append(f"tokens seen {compact(frame.tokens_seen)}")
    return " · ".join(parts)


def set_text(widget: Static, text: str, *, layout: bool = False) -> None:
    """Update a Static only when its text changed, by default without a layout pass: a layout
    pass re-renders the whole screen, the main CPU cost of a refresh. Use on fixed sizes."""
    if widget.content != text:
        widget.update(text, layout=layout)


class RunHeader(Vertical):
    on_cpu = False  # set by the screen from the run's spec (state.json has no device)
    cost: Cost | None = None  # set by the screen (read with the frame, off the UI thread)

    def compose(self) -> ComposeResult:
        with Horizontal(id="dash-title-row"):
            yield Label("", id="dash-run-id")
            yield Label("", id="dash-status")
            yield Label("", id="dash-model")
        with Horizontal(id="dash-progress-row"):
            yield ProgressBar(total=1, show_eta=False, id="dash-progress")
            yield Label("", id="dash-progress-text")
        yield Static("", id="dash-metrics")
        with Horizontal(id="dash-throughput-row"):
            yield Label("tokens/s", id="dash-tokens-label")
            yield Sparkline([], id="dash-tokens-spark")
            yield Label("", id="dash-throughput")

    def on_mount(self) -> None:
        self._status = self.query_one("#dash-status", Label)
        self._bar = self.query_one("#dash-progress", ProgressBar)
        self._progress = self.query_one("#dash-progress-text", Label)
        self._metrics = self.query_one("#dash-metrics", Static)
        self._throughput = self.query_one("#dash-throughput", Label)
        self._spark = self.query_one("#dash-tokens-spark", Sparkline)

    def show(self, frame: DashFrame) -> None:
        # The title row changes size rarely (status): it may lay out; the rest are fixed.
        set_text(self.query_one("#dash-run-id", Label), frame.run_id, layout=True)
        set_text(self._status, f" {status_label(frame)} ", layout=True)
        for name in STATUS_CLASSES:
            self._status.set_class(name == f"-{frame.status}", name)
            self.set_class(name == f"-{frame.status}", name)
        self._status.set_class(frame.stalled, "-stalled")
        host = f" · {frame.host}" if frame.host else ""
        gpus = f"{frame.num_gpus} GPU" + ("s" if frame.num_gpus != 1 else "")
        model = f"{frame.model} · {frame.method} · {'CPU' if self.on_cpu else gpus}{host}"
        set_text(self.query_one("#dash-model", Label), model, layout=True)
        total = frame.max_steps or 1
        progress = min(total, frame.step or 0)
        if (self._bar.total, self._bar.progress) != (total, progress):
            self._bar.update(total=total, progress=progress)
        set_text(self._progress, progress_text(frame, self.cost))
        set_text(self._metrics, metrics_text(frame))
        set_text(self._throughput, throughput_text(frame))
        if list(self._spark.data or []) != frame.tokens_hist:
            self._spark.data = list(frame.tokens_hist)

    def show_age(self, frame: DashFrame) -> None:
        """Only the wall-clock part changed (a live run without new lines)."""
        set_text(self._progress, progress_text(frame, self.cost))
