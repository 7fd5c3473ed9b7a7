"""The plan wizard's hub line: a hub model's download size against free disk, ctrl+g to
download it with a progress bar, and the config fetch of a typed `org/name`, all in thread
workers (the hub may be slow or unreachable; the screen never waits on it)."""

from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import ProgressBar, Static

from engine.errors import FtuiError
from engine.models import ModelArch


class HubPanel(Vertical):
    """Hidden until a model's weights are missing; then its size, free disk and the key."""

    class Resolved(Message):
        """A typed hub id was fetched (arch) or could not be (error)."""

        def __init__(self, name: str, arch: ModelArch | None, error: FtuiError | None) -> None:
            super().__init__()
            self.name = name
            self.arch = arch
            self.error = error

    class Downloaded(Message):
        def __init__(self, repo_id: str) -> None:
            super().__init__()
            self.repo_id = repo_id

    class Planned(Message):
        def __init__(self, repo_id: str, text: Text, ready: bool) -> None:
            super().__init__()
            self.repo_id = repo_id
            self.text = text
            self.ready = ready

    class Progressed(Message):
        def __init__(self, done: int, total: int, file: str) -> None:
            super().__init__()
            self.done = done
            self.total = total
            self.file = file

    class Failed(Message):
        def __init__(self, error: FtuiError) -> None:
            super().__init__()
            self.error = error

    DEFAULT_CSS = """
    HubPanel { height: auto; display: none; }
    HubPanel.-shown { display: block; }
    HubPanel ProgressBar { display: none; }
    HubPanel.-downloading ProgressBar { display: block; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.repo_id: str | None = None
        self.ready = False  # a plan says the download fits: ctrl+g may start it
        self.downloading = False

    def compose(self) -> ComposeResult:
        yield Static("", id="hub-line")
        yield ProgressBar(id="hub-progress", show_eta=True)

    def _line(self, text: Text | str) -> None:
        self.query_one("#hub-line", Static).update(text)

    def hide(self) -> None:
        if not self.downloading:
            self.repo_id, self.ready = None, False
            self.remove_class("-shown")

    def show_missing(self, repo_id: str) -> None:
        """The weights of `repo_id` are not here: ask the hub how big they are."""
        from engine.hub.settings import offline

        if offline():  # no hub to ask: the model line's "plan only" says enough
            self.hide()
            return
        if self.downloading or repo_id == self.repo_id:
            return
        self.repo_id, self.ready = repo_id, False
        self.add_class("-shown")
        self._line(Text(f"asking the hub about {repo_id}'s weights…", style="dim"))
        self._plan(repo_id)

    @work(thread=True, exclusive=True, group="hub-plan")
    def _plan(self, repo_id: str) -> None:
        from engine.hub.download import check_disk, plan_download
        from engine.hub.files import human_bytes

        try:
            plan = plan_download(repo_id)
        except FtuiError as error:
            self.post_message(self.Planned(repo_id, Text(str(error), style="yellow"), False))
            return
        text = Text()
        text.append(f"{human_bytes(plan.missing_bytes)} to download", "bold")
        text.append(f" · {human_bytes(plan.free_bytes)} free at {plan.cache}")
        try:
            check_disk(plan)
        except FtuiError as error:
            text.append(f"\n{error}", "bold red")
            self.post_message(self.Planned(repo_id, text, False))
            return
        text.append(" · ctrl+g downloads it", "green")
        self.post_message(self.Planned(repo_id, text, True))

    def on_hub_panel_planned(self, message: Planned) -> None:
        if message.repo_id == self.repo_id and not self.downloading:
            self.ready = message.ready
            self._line(message.text)
            self.screen.refresh_bindings()

    def start(self) -> bool:
        """ctrl+g: download the shown model; False when there is nothing to download."""
        if not self.ready or self.downloading or self.repo_id is None:
            return False
        self.downloading, self.ready = True, False
        self.screen.refresh_bindings()
        self.add_class("-downloading")
        self._line(Text(f"downloading {self.repo_id}…", style="bold"))
        self._download(self.repo_id)
        return True

    @work(thread=True, exclusive=True, group="hub-download")
    def _download(self, repo_id: str) -> None:
        from engine.hub.download import check_disk, download, plan_download

        last = [0.0]

        def report(p: object) -> None:
            now = time.monotonic()
            done, total = getattr(p, "done", 0), getattr(p, "total", 0)
            if now - last[0] >= 0.1 or done >= total:
                last[0] = now
                self.post_message(self.Progressed(done, total, getattr(p, "file", "")))

        try:
            plan = plan_download(repo_id)
            check_disk(plan)
            download(plan, report)
        except FtuiError as error:
            self.post_message(self.Failed(error))
            return
        self.post_message(self.Downloaded(repo_id))

    def on_hub_panel_progressed(self, message: Progressed) -> None:
        bar = self.query_one(ProgressBar)
        bar.update(total=message.total, progress=message.done)
        self._line(Text(f"downloading {self.repo_id} · {message.file}", style="bold"))

    def on_hub_panel_failed(self, message: Failed) -> None:
        self.downloading = False
        self.remove_class("-downloading")
        self.ready = self.repo_id is not None
        self.screen.refresh_bindings()
        self._line(Text(f"{message.error}\nctrl+g tries again (it resumes)", style="bold red"))

    def on_hub_panel_downloaded(self, message: Downloaded) -> None:
        self.downloading = False
        self.remove_class("-downloading")
        self._line(Text(f"{message.repo_id} downloaded", style="green"))
        # The screen hears it too (messages bubble): it re-reads the cache and the model line.

    def resolve(self, name: str) -> None:
        """Fetch a typed hub id's config in a worker; the screen gets `Resolved`."""
        self.add_class("-shown")
        self._line(Text(f"fetching {name}'s config from the hub…", style="dim"))
        self._resolve(name)

    @work(thread=True, exclusive=True, group="hub-resolve")
    def _resolve(self, name: str) -> None:
        from engine.models import resolve_model

        try:
            arch = resolve_model(name)
        except FtuiError as error:
            self.post_message(self.Resolved(name, None, error))
            return
        self.post_message(self.Resolved(name, arch, None))


def is_hub_name(name: str) -> bool:
    """A typed name that only the hub can answer (not a folder on disk)."""
    from engine.hub.settings import looks_like_repo_id

    text = name.strip()
    return looks_like_repo_id(text) and not Path(text).expanduser().exists()
