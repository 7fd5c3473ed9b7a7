"""Rich report of a plan: the setup, memory breakdown as a bar, speed, ETA, cost, runners-up."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from engine.data.stats import LengthStats
from engine.humanize import duration
from engine.plan.estimator import GIB
from engine.plan.planner import Candidate, Plan
from engine.plan.report import plan_to_dict

__all__ = ["plan_to_dict", "print_plan"]

PHASE_LABEL = {
    "forward_backward": "loss (end of forward, start of backward)",
    "recompute": "backward recompute of a layer",
    "optimizer_step": "optimizer step",
    "reference_forward": "reference model's forward (no grad)",
}
PHASE_SHORT = {
    "forward_backward": "loss",
    "recompute": "recompute",
    "optimizer_step": "optimizer step",
    "reference_forward": "reference forward",
}
PART_STYLE = {
    "weights": "blue",
    "trainable_weights": "cyan",
    "gradients": "magenta",
    "optimizer_states": "yellow",
    "activations": "green",
    "logits_and_loss": "bright_green",
    "temporaries": "red",
    "overhead": "grey50",
}


def speed_text(c: Candidate, train_tokens: float, price_per_hour: float) -> Text:
    """Tokens/s, ETA and cost, each with the likely range ("ETA 2h 10m, likely 1h 50m to
    2h 35m"), and whether a measured run of this kind corrected them."""
    slow, fast = c.tokens_per_s_band
    short, long = c.eta_band
    cheap, dear = c.cost_band
    text = Text()
    text.append(f"~{c.tokens_per_s:,.0f} tokens/s", "bold")
    text.append(f" (likely {slow:,.0f} to {fast:,.0f})")
    text.append(" · ETA ")
    text.append(duration(c.eta_s), "bold")
    text.append(f", likely {duration(short)} to {duration(long)}, for {train_tokens / 1e6:,.1f}M")
    text.append(" tokens · cost ")
    text.append(f"~${c.cost_usd:,.2f}", "bold")
    text.append(f" (likely ${cheap:,.2f} to ${dear:,.2f}) at ${price_per_hour:.2f}/GPU-hour")
    if c.speed_correction is not None:
        text.append(
            f" · corrected by a measured run of this kind (x{c.speed_correction:.2f})", "cyan"
        )
    return text


def phases_line(c: Candidate) -> Text:
    """Allocated GiB at each phase of a step, the peak in bold: a preference stage's reference
    pass is its own phase, shown here even when another phase is the peak."""
    mem = c.memory
    line = Text("allocated by phase: ")
    for index, (phase, value) in enumerate(mem.phase_bytes.items()):
        if index:
            line.append(" · ")
        style = "bold" if phase == mem.peak_phase else ""
        line.append(f"{PHASE_SHORT.get(phase, phase)} {value / GIB:.1f}", style)
    return line


def breakdown_bar(c: Candidate, capacity: float, width: int = 60) -> Text:
    """The device-level peak as stacked parts against the GPU's capacity."""
    total = max(capacity, c.memory.device_bytes)
    bar = Text()
    used = 0
    for part, value in c.memory.breakdown.items():
        cells = round(value / total * width)
        if cells and value > 0:
            bar.append("█" * cells, style=PART_STYLE.get(part, "white"))
            used += cells
    if used < width:
        bar.append("░" * (width - used), style="dim")
    return bar


def host_line(c: Candidate, node_ram: int) -> Text:
    """Host RAM beside GPU memory: per GPU process by part, the node's total, its RAM."""
    host = c.memory.host
    parts = {**host.pageable, **{f"{k} (pinned)": v for k, v in host.pinned.items()}}
    text = Text("host RAM per node: ")
    text.append(f"{host.per_node_bytes / GIB:,.1f} GiB", "bold" if c.host_fits else "bold red")
    text.append(f" of {node_ram / GIB:,.0f} GiB")
    text.append(f" ({host.gpus_per_node} GPU processes × ")
    text.append(", ".join(f"{k.replace('_', ' ')} {v / GIB:,.1f}" for k, v in parts.items()))
    text.append(" GiB)")
    if not c.host_fits:
        text.append(" · does not fit in host RAM", "red")
    return text


def setup_line(c: Candidate) -> str:
    cfg = c.config
    parts = [cfg.method]
    if cfg.is_peft:
        parts.append(f"r{cfg.rank} {'+'.join(cfg.targets)}" + (" DoRA" if cfg.dora else ""))
        if cfg.base_bits == 8:
            parts.append("8-bit base")
    elif cfg.is_prompt_learning:
        parts.append(f"{cfg.virtual_tokens} virtual tokens")
    elif cfg.method == "freeze":
        parts.append(f"top {cfg.trainable_layers} layers")
    parts.append(f"batch {cfg.batch}x{cfg.grad_accum}")
    parts.append(f"seq {cfg.seq_len}")
    parts.append("ckpt" if cfg.grad_ckpt else "no ckpt")
    if cfg.num_gpus > 1:
        parts.append(f"{cfg.num_gpus} GPUs {cfg.sharding}")
    if cfg.offload != "none":
        parts.append(f"offload {cfg.offload}")
    if cfg.optim != "adamw_torch":
        parts.append(cfg.optim)
    return " · ".join(parts)


def print_plan(
    plan: Plan,
    stats: LengthStats | None = None,
    dry: Any | None = None,
    console: Console | None = None,
) -> None:
    console = console or Console()
    machine = plan.request.machine
    arch = plan.request.arch
    capacity = machine.memory_bytes
    chosen = plan.best or (plan.alternatives[0] if plan.alternatives else None)
    head = (
        f"[b]{arch.name}[/b] on {machine.count}x {machine.gpu.name} ({capacity / GIB:.0f} GiB each)"
    )
    if not machine.detected:
        head += " [dim](planned, not detected)[/dim]"
    console.print(head)
    if stats is not None:
        console.print(
            f"dataset: {stats.records} records, ~{stats.total_tokens:,} tokens "
            f"(p50 {stats.p50}, p99 {stats.p99}, max {stats.max}; estimated from characters)"
        )
    if chosen is None:
        return
    params = chosen.memory.params
    console.print(
        f"parameters {params.total / 1e9:.2f}B, trainable {params.trainable / 1e6:,.1f}M · "
        f"{plan.evaluated} setups evaluated"
    )
    if plan.best is None or not plan.best.fits:
        console.print("[red b]Nothing fits.[/] Closest setup: " + setup_line(chosen))
    else:
        title = "Recommended" if plan.recommending else "Estimate"
        console.print(f"[green b]{title}:[/] " + setup_line(chosen))
    mem = chosen.memory
    limit = plan.request.headroom * capacity
    console.print(
        f"peak per GPU: [b]{mem.device_gib:.1f} GiB[/b] on the device (nvidia-smi), "
        f"{mem.reserved_gib:.1f} reserved, {mem.allocated_gib:.1f} allocated · peak at the "
        f"{PHASE_LABEL[mem.peak_phase]} · limit {limit / GIB:.1f} GiB "
        f"({plan.request.headroom:.0%})"
    )
    console.print(breakdown_bar(chosen, capacity))
    legend = Text()
    for part, value in mem.breakdown.items():
        if value > 0:
            legend.append("■ ", style=PART_STYLE.get(part, "white"))
            legend.append(f"{part.replace('_', ' ')} {value / GIB:.1f}  ")
    console.print(legend)
    if "reference_forward" in mem.phase_bytes:
        console.print(phases_line(chosen))
    console.print(host_line(chosen, machine.node_ram_bytes(chosen.config.num_gpus)))
    tokens = plan.request.train_tokens * plan.request.epochs
    speed = Text("speed ") + speed_text(chosen, tokens, machine.gpu.price_usd_per_hour)
    if not stats:
        speed.append(" (pass --dataset for your data)", "dim")
    console.print(speed)
    for note in mem.notes:
        console.print(f"[dim]note: {note}[/dim]")
    if dry is not None and hasattr(dry, "reason"):  # declined
        console.print(f"dry run declined: {dry.reason}; the analytic estimate stands")
    elif dry is not None:
        diff = (mem.allocated_bytes - dry.peak_allocated_bytes) / max(dry.peak_allocated_bytes, 1)
        console.print(
            f"dry run: {dry.peak_allocated_bytes / GIB:.2f} GiB allocated at the "
            f"{dry.peak_phase} ({dry.seconds:.1f} s) · analytic {mem.allocated_gib:.2f} GiB "
            f"({diff:+.1%})"
        )
    if plan.suggestions:
        console.print("[b]What would fit:[/b]")
        for suggestion in plan.suggestions:
            console.print(f"  • {suggestion}")
    others = [c for c in plan.alternatives if c is not chosen]
    if others:
        table = Table(title="Runners-up", title_justify="left", box=box.SIMPLE_HEAD)
        for column in ("setup", "device GiB", "host GiB/node", "tokens/s", "ETA", "cost"):
            table.add_column(column, no_wrap=column != "setup")
        for c in others:
            table.add_row(
                setup_line(c),
                f"{c.memory.device_gib:.1f}" + ("" if c.fits else " ✗"),
                f"{c.memory.host.per_node_bytes / GIB:,.0f}" + ("" if c.host_fits else " ✗"),
                f"{c.tokens_per_s:,.0f}",
                duration(c.eta_s),
                f"${c.cost_usd:,.2f}",
            )
        console.print(table)
