"""Pick a model: type to filter the built-in profiles, the models in the local Hugging Face
cache (scanned once in a thread worker), or type a local model directory."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option
from textual.worker import get_current_worker

from engine.models import ModelArch, resolve_model
from engine.paths import hf_hub_cache
from profiles import model_profiles, normalize_name

WEIGHT_PATTERNS = ("*.safetensors", "*.bin")


@dataclass(frozen=True)
class ModelChoice:
    """One pickable model."""

    key: str  # unique: "profile:<id>", "cache:<org/name>", "dir:<abs path>"
    label: str  # what the list shows
    name: str  # the model's name (profile id, HF repo id, or the directory as typed)
    source: str  # "profile", "hf-cache" or "dir"
    path: str | None = None  # directory holding config.json (hf-cache, dir)
    hf_id: str | None = None
    search: str = ""  # normalised words the filter matches against


def has_weights(path: str | Path) -> bool:
    folder = Path(path)
    return any(any(folder.glob(pattern)) for pattern in WEIGHT_PATTERNS)


def profile_choices() -> list[ModelChoice]:
    out = []
    for p in model_profiles():
        label = f"{p.id:<28} {p.params_b:>6.1f}B  {p.family}"
        words = " ".join((p.id, p.hf_id, p.family, *p.aliases))
        out.append(
            ModelChoice(
                key=f"profile:{p.id}",
                label=label,
                name=p.id,
                source="profile",
                hf_id=p.hf_id,
                search=words.lower(),
            )
        )
    return out


def _snapshot(repo: Path) -> Path | None:
    """The snapshot `refs/main` points at, else the newest one with a config.json."""
    ref = repo / "refs" / "main"
    if ref.is_file():
        candidate = repo / "snapshots" / ref.read_text(encoding="utf-8").strip()
        if (candidate / "config.json").is_file():
            return candidate
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    found = [s for s in snapshots.iterdir() if (s / "config.json").is_file()]
    return max(found, key=lambda s: s.stat().st_mtime) if found else None


def scan_hf_cache(cache: Path) -> list[ModelChoice]:
    """Every `models--org--name` folder of the hub cache with a config.json (no network)."""
    out: list[ModelChoice] = []
    try:
        repos = sorted(p for p in cache.iterdir() if p.name.startswith("models--"))
    except OSError:
        return out
    for repo in repos:
        try:
            snapshot = _snapshot(repo)
            if snapshot is None:
                continue
            config = json.loads((snapshot / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(config, dict):
            continue
        repo_id = repo.name[len("models--") :].replace("--", "/")
        weights = "weights" if has_weights(snapshot) else "config only"
        kind = config.get("model_type", "?")
        out.append(
            ModelChoice(
                key=f"cache:{repo_id}",
                label=f"{repo_id:<36} HF cache · {kind} · {weights}",
                name=repo_id,
                source="hf-cache",
                path=str(snapshot),
                hf_id=repo_id,
                search=f"{repo_id} {kind} hf cache".lower(),
            )
        )
    return out


def local_dir_choice(text: str) -> ModelChoice | None:
    """A choice for a typed directory holding config.json, else None."""
    text = text.strip()
    if not text or not any(sep in text for sep in ("/", "~", ".")):
        return None
    path = Path(text).expanduser()
    try:
        if not (path / "config.json").is_file():
            return None
    except OSError:
        return None
    weights = "weights" if has_weights(path) else "config only"
    return ModelChoice(
        key=f"dir:{path.absolute()}",
        label=f"{text}  (local directory · {weights})",
        name=text,
        source="dir",
        path=str(path.absolute()),
        search=text.lower(),
    )


def filter_choices(choices: list[ModelChoice], text: str) -> list[ModelChoice]:
    """Choices whose words contain every typed word (case- and punctuation-insensitive)."""
    words = [normalize_name(w) for w in text.split()]
    words = [w for w in words if w]
    if not words:
        return list(choices)
    return [c for c in choices if all(w in normalize_name(c.search) for w in words)]


def resolve_choice(choice: ModelChoice) -> ModelArch:
    """The architecture of a choice (reads one config.json; raises FtuiError)."""
    if choice.source == "profile":
        return resolve_model(choice.name)
    assert choice.path is not None
    arch = resolve_model(choice.path)
    if choice.source == "hf-cache":
        arch = dataclasses.replace(arch, name=choice.name, source="hf-cache", hf_id=choice.hf_id)
    else:  # a folder; one fetched from the hub keeps its id (download, spec name)
        arch = dataclasses.replace(arch, name=choice.name, hf_id=choice.hf_id or arch.hf_id)
    return arch


def choice_from_arch(arch: ModelArch) -> ModelChoice:
    source = arch.source
    return ModelChoice(
        key=f"{source}:{arch.path or arch.name}",
        label=arch.name,
        name=arch.name,
        source=source,
        path=arch.path,
        hf_id=arch.hf_id,
    )


class CacheScanned(Message):
    def __init__(self, choices: list[ModelChoice]) -> None:
        super().__init__()
        self.choices = choices


class ModelPicker(Vertical):
    """Filter input + list. Posts `ModelPicker.Picked` when the user picks a model.

    The list is out of the Tab order: the arrows move its highlight from the filter and enter
    picks, so Tab from the filter goes on to the dataset (the next numbered pane) and a path
    typed after Tab lands there; a click on the list still picks."""

    BINDINGS = [
        Binding("down", "move(1)", "Next model", show=False),
        Binding("up", "move(-1)", "Previous model", show=False),
        Binding("pagedown", "move(7)", show=False),
        Binding("pageup", "move(-7)", show=False),
    ]

    class Picked(Message):
        def __init__(self, choice: ModelChoice) -> None:
            super().__init__()
            self.choice = choice

    class CacheReady(Message):
        """The HF cache was scanned (`cached_weights_for` knows its models now)."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.profiles = profile_choices()
        self.cached: list[ModelChoice] = []
        self.shown: list[ModelChoice] = []
        self.scanned = False

    def compose(self) -> ComposeResult:
        yield Input(
            placeholder="type to filter, or a local model directory",
            id="model-filter",
            compact=True,
        )
        options = OptionList(id="model-list")
        options.can_focus = False
        yield options
        yield Static("", id="model-note")

    def on_mount(self) -> None:
        self._refill()
        self.scan_cache()

    @work(thread=True, exclusive=True, group="hf-cache")
    def scan_cache(self) -> None:
        worker = get_current_worker()
        choices = scan_hf_cache(hf_hub_cache())
        if not worker.is_cancelled:
            self.post_message(CacheScanned(choices))

    def on_cache_scanned(self, message: CacheScanned) -> None:
        message.stop()
        self.cached = message.choices
        self.scanned = True
        self._refill()
        self.post_message(self.CacheReady())

    @property
    def all_choices(self) -> list[ModelChoice]:
        return self.profiles + self.cached

    def _refill(self) -> None:
        text = self.query_one("#model-filter", Input).value
        local = local_dir_choice(text)
        shown = [local] if local else []
        shown += filter_choices(self.all_choices, "" if local else text)
        self.shown = shown
        options = self.query_one("#model-list", OptionList)
        options.set_options(
            Option(Text(c.label, no_wrap=True, overflow="ellipsis"), id=str(i))
            for i, c in enumerate(shown)
        )
        if shown:
            options.highlighted = 0
        cache_note = (
            f"{len(self.cached)} in the HF cache" if self.scanned else "scanning the HF cache…"
        )
        note = f"{len(shown)} of {len(self.all_choices)} models · {cache_note}"
        if not shown:
            note = (
                "no match: type part of a name, or the path of a folder with config.json · "
                + cache_note
            )
        self.query_one("#model-note", Static).update(Text(note))

    def action_move(self, delta: int) -> None:
        options = self.query_one("#model-list", OptionList)
        if not options.option_count:
            return
        current = options.highlighted if options.highlighted is not None else 0
        options.highlighted = max(0, min(options.option_count - 1, current + delta))

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "model-filter":
            event.stop()
            self._refill()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "model-filter":
            return
        event.stop()
        index = self.query_one("#model-list", OptionList).highlighted
        if index is not None and index < len(self.shown):
            self.post_message(self.Picked(self.shown[index]))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option_index < len(self.shown):
            self.post_message(self.Picked(self.shown[event.option_index]))

    def choice_named(self, name: str) -> ModelChoice | None:
        """The choice a name refers to (a profile id/alias, a cached repo, or a directory)."""
        local = local_dir_choice(name)
        if local:
            return local
        key = normalize_name(name)
        for c in self.all_choices:
            if key in (normalize_name(c.name), normalize_name(c.hf_id or "")):
                return c
        for p in model_profiles():
            if key in {normalize_name(a) for a in (p.id, p.hf_id, *p.aliases)}:
                return next(c for c in self.profiles if c.name == p.id)
        return None

    def cached_weights_for(self, hf_id: str | None) -> str | None:
        """The HF-cache snapshot holding `hf_id`'s weights, if it is there."""
        if not hf_id:
            return None
        for c in self.cached:
            if c.hf_id and c.hf_id.lower() == hf_id.lower() and c.path and has_weights(c.path):
                return c.path
        return None
