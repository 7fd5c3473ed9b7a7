"""The plan's numbers: memory breakdown as a stacked bar against the GPU's capacity,
device/reserved/allocated GiB, peak phase, tokens/s, ETA, cost, the dry run beside the
analytic estimate; and the runners-up table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text
from textual.widgets import DataTable, Static

# One source for the colours, labels and setup wording of `ftui plan` and the wizard.
from engine.humanize import duration
from engine.plan.dryrun.entry import DryRunResult
from engine.plan.estimator import GIB
from engine.plan.planner import Candidate, Machine
from tui.cli.render_plan import PART_STYLE, PHASE_LABEL, breakdown_bar, setup_line, speed_text


@dataclass(frozen=True)
class DryRunView:
    """The dry run's state for the summary: running, done (result) or failed (error)."""

    running: bool = False
    result: DryRunResult | None = None
    error: str | None = None
    stale: bool = False  # the result is for a setup the user has since changed


@dataclass(frozen=True)
class SummaryView:
    candidate: Candidate
    machine: Machine
    headroom: float
    train_tokens: float  # tokens per epoch x epochs
    title: str  # "Recommended", "Your setup", ...
    suggestions: tuple[str, ...] = ()
    dry: DryRunView = DryRunView()
    tokens_from_dataset: bool = False


def render_summary(view: SummaryView, width: int) -> RenderableType:
    c, machine = view.candidate, view.machine
    mem = c.memory
    capacity = machine.memory_bytes
    limit = view.headroom * capacity
    lines: list[RenderableType] = []

    head = Text()
    head.append(f"{view.title}  ", "bold")
    if c.fits:
        head.append("✓ fits", "bold green")
    else:
        head.append("✗ does not fit", "bold red")
    head.append(
        f" · {c.config.num_gpus}x {machine.gpu.id} ({capacity / GIB:.1f} GiB) · limit "
        f"{limit / GIB:.1f} GiB ({view.headroom:.0%})"
    )
    lines.append(head)
    lines.append(Text(setup_line(c)))
    lines.append(breakdown_bar(c, capacity, width=width))
    legend = Text()
    for part, value in mem.breakdown.items():
        if value > 0:
            legend.append("■ ", style=PART_STYLE.get(part, "white"))
            legend.append(f"{part.replace('_', ' ')} {value / GIB:.1f}  ")
    lines.append(legend)
    peak = Text("peak ")
    peak.append(f"{mem.device_gib:.1f} GiB", "bold")
    peak.append(
        f" on the device (nvidia-smi) · {mem.reserved_gib:.1f} reserved · "
        f"{mem.allocated_gib:.1f} allocated"
    )
    lines.append(peak)
    lines.append(Text(f"at the {PHASE_LABEL.get(mem.peak_phase, mem.peak_phase)}", style="dim"))
    if mem.host_bytes:
        lines.append(Text(f"host RAM for offloaded states: {mem.host_bytes / GIB:.1f} GiB"))
    speed = speed_text(c, view.train_tokens, machine.gpu.price_usd_per_hour)
    if not view.tokens_from_dataset:
        speed.append(" (assumed until a dataset is checked)", "dim")
    lines.append(speed)
    params = mem.params
    lines.append(
        Text(
            f"{params.total / 1e9:.2f}B parameters, {params.trainable / 1e6:,.1f}M trainable",
            style="dim",
        )
    )
    lines.append(_dry_line(view.dry, c))
    for note in mem.notes:
        lines.append(Text(f"note: {note}", style="dim"))
    if view.suggestions:
        lines.append(Text("What would fit:", style="bold"))
        for suggestion in view.suggestions:
            lines.append(Text(f"  • {suggestion}"))
    return Group(*lines)


def _dry_line(dry: DryRunView, c: Candidate) -> Text:
    if dry.running:
        return Text("dry run: running (fake tensors, no GPU)… ctrl+d cancels", style="italic")
    if dry.error:
        return Text(f"dry run failed: {dry.error}", style="red")
    if dry.result is None:
        return Text("dry run: ctrl+d runs real training steps on fake tensors", style="dim")
    r = dry.result
    analytic = c.memory.allocated_bytes
    diff = (analytic - r.peak_allocated_bytes) / max(r.peak_allocated_bytes, 1)
    line = Text("dry run ")
    line.append(f"{r.peak_allocated_bytes / GIB:.2f} GiB", "bold")
    line.append(
        f" allocated at the {r.peak_phase} ({r.seconds:.1f} s) · analytic "
        f"{analytic / GIB:.2f} GiB ({diff:+.1%})"
    )
    if dry.stale:
        line.append(" · for an earlier setup", "yellow")
    return line


class PlanSummary(Static):
    """The current setup's estimate; `-nofit` while it does not fit."""

    def show(self, view: SummaryView | None, placeholder: str = "") -> None:
        self.view = view
        if view is None:
            self.set_class(False, "-nofit")
            self.update(Text(placeholder))
            return
        width = max(20, (self.content_size.width or 60) - 1)
        self.set_class(not view.candidate.fits, "-nofit")
        self.update(render_summary(view, width))

    def on_resize(self) -> None:
        view = getattr(self, "view", None)
        if view is not None:
            self.show(view)


def short_setup(c: Candidate) -> str:
    """What tells runners-up apart (rank, targets and seq len rarely differ between them)."""
    cfg = c.config
    parts = [
        cfg.method,
        f"{cfg.batch}x{cfg.grad_accum}",
        "ckpt" if cfg.grad_ckpt else "no ckpt",
    ]
    if cfg.num_gpus > 1:
        parts.append(cfg.sharding if cfg.sharding != "none" else "DDP")
    if cfg.offload != "none":
        parts.append(f"offload {cfg.offload}")
    if cfg.optim != "adamw_torch":
        parts.append(cfg.optim)
    return " · ".join(parts)


class RunnersUpTable(DataTable[Any]):
    """The recommended setup and its runners-up; selecting a row makes it the current setup."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", **kwargs)
        self.candidates: list[Candidate] = []

    def on_mount(self) -> None:
        columns = (
            ("mark", ""),
            ("gib", "GiB"),
            ("speed", "tokens/s"),
            ("eta", "ETA"),
            ("cost", "cost"),
            ("setup", "method · batch x accum"),
        )
        for key, label in columns:
            self.add_column(label, key=key)

    def show(self, candidates: list[Candidate], recommended: Candidate | None) -> None:
        self.candidates = candidates
        self.clear()
        for i, c in enumerate(candidates):
            mark = "★" if c is recommended else ""
            self.add_row(
                Text(mark),
                Text(f"{c.memory.device_gib:.1f}" + ("" if c.fits else " ✗"), justify="right"),
                Text(f"{c.tokens_per_s:,.0f}", justify="right"),
                Text(duration(c.eta_s), justify="right"),
                Text(f"${c.cost_usd:,.2f}", justify="right"),
                Text(short_setup(c), no_wrap=True),
                key=str(i),
            )
