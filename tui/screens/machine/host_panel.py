"""CPU, RAM and disk of the machine ftui runs on."""

from __future__ import annotations

from rich.console import Group
from rich.text import Text
from textual.widgets import Static

from engine.machine.hardware import GIB, HostInfo
from tui.cli.render import usage_bar


class HostPanel(Static):
    DEFAULT_CLASSES = "panel"

    def show(self, host: HostInfo) -> None:
        self.border_title = f"Host · {host.hostname}"
        cpu = Text(f"CPU  {host.cpu_model} · {host.cpu_cores} cores / {host.cpu_threads} threads")
        if host.load_avg_1m is not None:
            cpu.append(f" · load {host.load_avg_1m:.2f}", "dim")
        used = host.ram_total_bytes - host.ram_available_bytes
        ram = Text("RAM  ")
        ram.append_text(usage_bar(used, host.ram_total_bytes, 24))
        ram.append(f"  {used / GIB:.1f} / {host.ram_total_bytes / GIB:.1f} GiB")
        lines = [cpu, ram]
        if host.disk_free_bytes is not None and host.disk_total_bytes:
            disk = Text("disk ")
            disk.append_text(
                usage_bar(host.disk_total_bytes - host.disk_free_bytes, host.disk_total_bytes, 24)
            )
            disk.append(f"  {host.disk_free_bytes / GIB:.1f} GiB free at {host.disk_path}")
            lines.append(disk)
        self.update(Group(*lines))
