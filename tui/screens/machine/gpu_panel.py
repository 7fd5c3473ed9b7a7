"""One GPU: memory bar, utilisation, temperature, power and the processes using it."""

from __future__ import annotations

from rich.console import Group
from rich.text import Text
from textual.widgets import Static

from engine.machine.hardware import GIB, GpuInfo
from tui.cli.render import usage_bar

HOT_C = 83.0


def _value(value: float | None, unit: str) -> str:
    return "N/A" if value is None else f"{value:.0f}{unit}"


class GpuPanel(Static):
    """Shows one `GpuInfo`; call `show()` with each new reading."""

    DEFAULT_CLASSES = "panel"

    def __init__(self, gpu: GpuInfo, **kwargs: object) -> None:
        super().__init__(id=f"gpu-{gpu.index}", **kwargs)  # type: ignore[arg-type]
        self.gpu = gpu

    def on_mount(self) -> None:
        self.show(self.gpu)

    def show(self, gpu: GpuInfo) -> None:
        self.gpu = gpu
        profile = f" ({gpu.profile_id})" if gpu.profile_id else ""
        self.border_title = f"GPU {gpu.index} · {gpu.name}{profile}"
        frac = gpu.memory_used_bytes / gpu.memory_total_bytes if gpu.memory_total_bytes else 0.0
        self.set_class(gpu.lost, "-lost")
        self.set_class(frac >= 0.9, "-full")
        self.set_class((gpu.temperature_c or 0) >= HOT_C, "-hot")
        if gpu.lost:
            self.update(Text("NVML lost this GPU: check `nvidia-smi` and the kernel log", "red"))
            return
        memory = Text("mem  ")
        memory.append_text(usage_bar(gpu.memory_used_bytes, gpu.memory_total_bytes, 24))
        memory.append(
            f"  {gpu.memory_used_bytes / GIB:.1f} / {gpu.memory_total_bytes / GIB:.1f} GiB"
        )
        util = Text("util ")
        util.append_text(usage_bar(gpu.utilization_pct or 0.0, 100.0, 24))
        power = _value(gpu.power_draw_w, "")
        if gpu.power_limit_w:
            power += f" / {gpu.power_limit_w:.0f} W"
        else:
            power += " W"
        stats = Text(f"temp {_value(gpu.temperature_c, '°C')}   power {power}")
        if gpu.compute_capability:
            major, minor = gpu.compute_capability
            stats.append(f"   sm_{major}{minor}{' bf16' if gpu.bf16_supported else ''}", "dim")
        if gpu.nvlink_active_links:
            stats.append(f"   NVLink×{gpu.nvlink_active_links}", "dim")
        lines: list[Text] = [memory, util, stats]
        if gpu.processes:
            for proc in gpu.processes[:4]:
                used = (
                    f"{proc.used_memory_bytes / GIB:.1f} GiB"
                    if proc.used_memory_bytes is not None
                    else "N/A"
                )
                lines.append(Text(f"  pid {proc.pid:<8} {used:>10}  {proc.name or '?'}", "dim"))
            if len(gpu.processes) > 4:
                lines.append(Text(f"  … {len(gpu.processes) - 4} more", "dim"))
        else:
            lines.append(Text("  no processes", "dim"))
        self.update(Group(*lines))
