"""The runs table: one row per run. Cells are updated in place when the set of runs is
unchanged, and the cursor follows its run (not its row number) when runs come and go."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.binding import Binding
from textual.coordinate import Coordinate
from textual.widgets import DataTable

from engine.run.operations import RunInfo

# (column key, header)
COLUMNS = (
    ("run", "run"),
    ("status", "status"),
    ("age", "age"),
    ("progress", "progress"),
    ("loss", "last loss"),
    ("gpus", "GPUs"),
    ("model", "model (method)"),
)
# Status -> theme variable that colours it.
STATUS_COLOUR = {
    "running": "success",
    "starting": "accent",
    "stopping": "warning",
    "completed": "primary",
    "stopped": "warning",
    "failed": "error",
}


def format_age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def format_progress(info: RunInfo) -> str:
    if info.step is None:
        return "-"
    if info.max_steps:
        share = info.step / info.max_steps if info.max_steps > 0 else 0
        return f"{info.step}/{info.max_steps} ({share:.0%})"
    return str(info.step)


def format_loss(info: RunInfo) -> str:
    return f"{info.loss:.4f}" if isinstance(info.loss, (int, float)) else "-"


def row_values(info: RunInfo, now: float) -> dict[str, str]:
    """The plain text of each cell, by column key."""
    return {
        "run": info.run_id,
        "status": info.label,
        "age": format_age(now - info.created_at) if info.created_at else "-",
        "progress": format_progress(info),
        "loss": format_loss(info),
        "gpus": info.gpus_label,
        "model": f"{info.model} ({info.method})",
    }


def matches(info: RunInfo, text: str) -> bool:
    """Case-insensitive substring filter over id, status, model and method."""
    needle = text.strip().lower()
    if not needle:
        return True
    haystack = " ".join((info.run_id, info.label, info.model, info.method)).lower()
    return all(word in haystack for word in needle.split())


class RunsTable(DataTable[Any]):
    """A DataTable of RunInfo rows keyed by run id."""

    # Enter selects the row (RowSelected): the screen opens its dashboard. Shown in the footer.
    BINDINGS = [Binding("enter", "select_cursor", "Open")]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.infos: dict[str, RunInfo] = {}
        self._values: dict[str, dict[str, str]] = {}  # the text shown, by run and column
        self.marked: list[str] = []  # run ids marked for comparing, in the order marked

    def on_mount(self) -> None:
        for key, label in COLUMNS:
            self.add_column(label, key=key)

    @property
    def selected_run_id(self) -> str | None:
        if self.row_count == 0:
            return None
        row = min(self.cursor_row, self.row_count - 1)
        key = self.coordinate_to_cell_key(Coordinate(row, 0)).row_key.value
        return str(key) if key is not None else None

    @property
    def run_ids(self) -> list[str]:
        return [str(row.key.value) for row in self.ordered_rows]

    def toggle_mark(self, run_id: str) -> None:
        if run_id in self.marked:
            self.marked.remove(run_id)
        else:
            self.marked.append(run_id)
        if run_id in self.infos:
            run = self._values[run_id]["run"]
            cell = self._cell("run", run, self.infos[run_id], {})
            self.update_cell(run_id, "run", cell, update_width=True)

    def _cell(self, column: str, value: str, info: RunInfo, colours: dict[str, str]) -> Text:
        if column == "run":  # a marked run shows a dot before its id
            mark = "● " if info.run_id in self.marked else ""
            return Text(mark + value, no_wrap=True)
        if column != "status":
            return Text(value, no_wrap=True)
        variable = STATUS_COLOUR.get(info.status, "")
        return Text(value, style=colours.get(variable, ""), no_wrap=True)

    def show(self, infos: list[RunInfo], now: float) -> None:
        """Show `infos` (already filtered and ordered), keeping the cursor on its run. Only
        cells whose text changed are touched."""
        colours = self.app.get_css_variables()
        selected = self.selected_run_id
        old_index = self.cursor_row
        self.infos = {info.run_id: info for info in infos}
        values = {info.run_id: row_values(info, now) for info in infos}
        if list(values) == self.run_ids:
            for info in infos:
                shown = self._values.get(info.run_id, {})
                for column, value in values[info.run_id].items():
                    if shown.get(column) != value:
                        cell = self._cell(column, value, info, colours)
                        self.update_cell(info.run_id, column, cell, update_width=True)
            self._values = values
            return
        self.clear()
        self._values = values
        for info in infos:
            row = values[info.run_id]
            cells = (self._cell(c, row[c], info, colours) for c, _ in COLUMNS)
            self.add_row(*cells, key=info.run_id)
        if not infos:
            return
        if selected in self.infos:
            self.move_cursor(row=self.get_row_index(selected), animate=False)
        else:
            self.move_cursor(row=min(old_index, len(infos) - 1), animate=False)
