"""The run's lifecycle events with the dashboard's alerts among them, newest at the bottom."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.widget import Widget

from tui.screens.dashboard.model import EventRow


class EventList(Widget):
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "dash-events--time",
        "dash-events--info",
        "dash-events--warning",
        "dash-events--error",
        "dash-events--done",
    }

    DEFAULT_CSS = """
    EventList { height: 1fr; text-wrap: nowrap; text-overflow: ellipsis; }
    EventList > .dash-events--time { color: $text-muted; }
    EventList > .dash-events--info { color: $text; }
    EventList > .dash-events--warning { color: $warning; text-style: bold; }
    EventList > .dash-events--error { color: $error; text-style: bold; }
    EventList > .dash-events--done { color: $success; text-style: bold; }
    """

    def __init__(self, **kwargs: str) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.rows: list[EventRow] = []

    def show(self, rows: list[EventRow]) -> None:
        if rows != self.rows:
            self.rows = rows
            self.refresh()

    def render(self) -> Text:
        height = max(1, self.content_size.height)
        if not self.rows:
            return Text("no events yet", style=self.get_component_rich_style("dash-events--time"))
        time_style = self.get_component_rich_style("dash-events--time")
        text = Text(no_wrap=True, overflow="ellipsis")
        shown = self.rows[-height:]
        for i, row in enumerate(shown):
            text.append(f"{row.when} ", time_style)
            marker = "▲ " if row.alert else "  "
            style = self.get_component_rich_style(f"dash-events--{row.severity}")
            text.append(marker + row.text, style)
            if i < len(shown) - 1:
                text.append("\n")
        return text
