"""Rich renderings for the plain (non-app) commands: `gpus`, `doctor`, `models`."""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from engine.machine.doctor import MISSING, OK, WARN, Check
from engine.machine.hardware import GIB, MachineSnapshot
from profiles import GpuProfile, ModelProfile

_STATUS_STYLE = {OK: "green", WARN: "yellow", MISSING: "red"}


def usage_bar(used: float, total: float, width: int = 20, *, percent: bool = True) -> Text:
    """A bar like `██████░░░░ 61%`, coloured by how full it is."""
    frac = 0.0 if total <= 0 else max(0.0, min(1.0, used / total))
    filled = round(frac * width)
    style = "green" if frac < 0.7 else "yellow" if frac < 0.9 else "red"
    bar = Text("█" * filled, style=style)
    bar.append("░" * (width - filled), style="dim")
    if percent:
        bar.append(f" {frac * 100:3.0f}%")
    return bar


def _fmt(value: float | None, unit: str, digits: int = 0) -> str:
    return "N/A" if value is None else f"{value:.{digits}f}{unit}"


def print_machine(machine: MachineSnapshot, console: Console | None = None) -> None:
    console = console or Console()
    host = machine.host
    title = "Simulated machine" if machine.backend == "simulated" else "This machine"
    if machine.has_gpu:
        table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        for column in ("#", "GPU", "memory", "util", "temp", "power", "procs"):
            table.add_column(column, no_wrap=True)
        for gpu in machine.gpus:
            name = gpu.name.removeprefix("NVIDIA ")
            if gpu.lost:
                table.add_row(str(gpu.index), name, "[red]GPU lost: check `nvidia-smi`")
                continue
            memory = usage_bar(gpu.memory_used_bytes, gpu.memory_total_bytes, 8, percent=False)
            memory.append(f" {gpu.memory_used_bytes / GIB:.1f}/{gpu.memory_total_bytes / GIB:.0f}G")
            power = _fmt(gpu.power_draw_w, "")
            power += f"/{_fmt(gpu.power_limit_w, ' W')}" if gpu.power_limit_w else " W"
            table.add_row(
                str(gpu.index),
                name,
                memory,
                _fmt(gpu.utilization_pct, "%"),
                _fmt(gpu.temperature_c, "°C"),
                power,
                str(len(gpu.processes)),
            )
        console.print(table)
        console.print(
            f"driver {machine.driver_version} · CUDA driver API {machine.cuda_driver_version}"
            + (" · [yellow]simulated from profiles[/]" if machine.backend == "simulated" else "")
        )
        if machine.p2p and any(v is False for row in machine.p2p for v in row):
            console.print("[yellow]peer-to-peer access is not available between every GPU pair")
    else:
        console.print(f"[yellow]No GPU:[/] {machine.no_gpu_reason}")
        console.print(
            "Plan for a machine you do not have yet: [bold]ftui gpus --simulate h100x8[/]"
        )
    ram = Text(f"RAM {host.ram_available_bytes / GIB:.1f} GiB free of ")
    ram.append(f"{host.ram_total_bytes / GIB:.1f} GiB ")
    ram.append_text(
        usage_bar(host.ram_total_bytes - host.ram_available_bytes, host.ram_total_bytes, 12)
    )
    console.print(f"CPU {host.cpu_model} · {host.cpu_cores} cores / {host.cpu_threads} threads")
    console.print(ram)
    if host.disk_free_bytes is not None:
        console.print(f"Disk {host.disk_free_bytes / GIB:.1f} GiB free at {host.disk_path}")


def print_checks(checks: Sequence[Check], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(no_wrap=True)
    table.add_column(no_wrap=True)
    table.add_column()
    for check in checks:
        style = _STATUS_STYLE.get(check.status, "")
        detail = Text(check.detail)
        if check.fix and check.status != OK:
            detail.append(f"\n→ {check.fix}", style="dim")
        table.add_row(Text(f"{check.status:<7}", style=style), check.name, detail)
    console.print(table)


def print_model_profiles(profiles: Sequence[ModelProfile], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title="Built-in model profiles", title_justify="left")
    for column in ("id", "Hugging Face id", "params", "type", "layers", "hidden", "vocab"):
        table.add_column(column, no_wrap=True)
    for p in profiles:
        cfg = p.config
        table.add_row(
            p.id,
            p.hf_id,
            f"{p.params_b:g}B",
            str(cfg.get("model_type")),
            str(cfg.get("num_hidden_layers")),
            str(cfg.get("hidden_size")),
            str(cfg.get("vocab_size")),
        )
    console.print(table)


def print_gpu_profiles(profiles: Sequence[GpuProfile], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title="Built-in GPU profiles", title_justify="left")
    for column in ("id", "name", "memory", "bf16 TFLOP/s", "bandwidth", "$/h", "price date"):
        table.add_column(column, no_wrap=True)
    for p in profiles:
        table.add_row(
            p.id,
            p.name,
            f"{p.memory_gb:g} GB",
            f"{p.bf16_tflops:g}" + ("" if p.bf16 else " (fp16)"),
            f"{p.memory_bandwidth_gbs:g} GB/s",
            f"{p.price_usd_per_hour:.2f}",
            p.price_date,
        )
    console.print(table)
