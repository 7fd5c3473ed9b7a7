"""The servers section of the runs screen: every running `ftui serve` with its address, request
count, decode tokens/s and latency percentiles. The numbers come from
`engine.serve.state.list_servers` (server.json and requests.jsonl); this only renders them."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widgets import DataTable

from engine.serve.state import LIVE, ServerInfo
from tui.screens.runs.table import format_age

# (column key, header)
# (column key, header): the numbers first, so an 80-column terminal shows them
COLUMNS = (
    ("run", "server of"),
    ("requests", "requests"),
    ("speed", "tokens/s"),
    ("latency", "latency p50/p95"),
    ("ttft", "1st token"),
    ("status", "status"),
    ("url", "address"),
    ("up", "up"),
)
SHOWN = (*LIVE, "dead")  # a server that claims to run but whose process is gone is shown too
STATUS_COLOUR = {"ready": "success", "running": "success", "dead": "error"}


def shown_servers(infos: list[ServerInfo]) -> list[ServerInfo]:
    return [info for info in infos if info.status in SHOWN]


def _seconds(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def server_values(info: ServerInfo, now: float) -> dict[str, str]:
    """The plain text of each cell, by column key."""
    stats, record = info.stats, info.record
    requests = str(stats.get("requests", 0))
    if stats.get("errors"):
        requests += f" ({stats['errors']} failed)"
    speed = stats.get("tokens_per_s_median")
    p50, p95 = stats.get("total_s_median"), stats.get("total_s_p95")
    latency = "-" if p50 is None else f"{_seconds(p50)} / {_seconds(p95)}"
    started = record.get("ready_at") or record.get("started_at")
    return {
        "run": info.run_id,
        "status": info.status,
        "url": str(record.get("url") or "-") + (" (key)" if record.get("api_key") else ""),
        "requests": requests,
        "speed": f"{speed:,.1f}" if isinstance(speed, (int, float)) else "-",
        "latency": latency,
        "ttft": _seconds(stats.get("ttft_s_median")),
        "up": format_age(now - float(started)) if started else "-",
    }


class ServersTable(DataTable[Any]):
    """A DataTable of the running servers, keyed by run id; rebuilt at each refresh."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="none", zebra_stripes=True, **kwargs)

    def on_mount(self) -> None:
        for key, label in COLUMNS:
            self.add_column(label, key=key)

    def show(self, infos: list[ServerInfo], now: float) -> None:
        colours = self.app.get_css_variables()
        self.clear()
        for info in infos:
            values = server_values(info, now)
            cells = []
            for key, _ in COLUMNS:
                style = (
                    colours.get(STATUS_COLOUR.get(info.status, ""), "") if key == "status" else ""
                )
                cells.append(Text(values[key], style=style, no_wrap=True))
            self.add_row(*cells, key=info.run_id)
