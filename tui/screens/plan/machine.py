"""Pick the GPUs to plan for: this machine's (from the backend's snapshot) or any GPU profile
with a count; and the device the launched run uses. No GPU is a normal state: plan for a
profile, launch on the CPU."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Grid, Vertical
from textual.message import Message
from textual.widgets import Input, Label, Select, Static

from engine.errors import FtuiError
from engine.machine.fakenvml import parse_simulate_spec
from engine.machine.hardware import GIB, MachineSnapshot
from engine.plan.planner import Machine
from profiles import GpuProfile, find_gpu_profile, gpu_profiles

DETECTED = "detected"
DEFAULT_PROFILE = "h100"
DEVICES = ("auto", "cuda", "cpu")


class MachinePicker(Vertical):
    """Posts `MachinePicker.Changed(what)` with what in ("gpu", "count", "device")."""

    class Changed(Message):
        def __init__(self, what: str) -> None:
            super().__init__()
            self.what = what

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.snapshot: MachineSnapshot | None = None
        self.detected_profile: GpuProfile | None = None

    def compose(self) -> ComposeResult:
        with Grid(classes="knobs-grid"):
            yield Label("GPU", classes="knob-label")
            yield Select(
                [(f"{p.id} · {p.name}", p.id) for p in gpu_profiles()],
                allow_blank=True,
                prompt="reading the GPUs…",
                id="gpu-select",
                compact=True,
                classes="-wide",
            )
            yield Label("GPUs", classes="knob-label")
            yield Input("1", type="integer", id="gpu-count", compact=True)
            yield Label("run on", classes="knob-label")
            yield Select(
                [(d, d) for d in DEVICES], allow_blank=False, id="gpu-device", compact=True
            )
        yield Static("", id="gpu-note")

    # -- set up from the snapshot ----------------------------------------------------------------
    @property
    def has_real_gpu(self) -> bool:
        """GPUs a run could use here (a simulated machine has none)."""
        snap = self.snapshot
        return bool(snap and snap.has_gpu and snap.backend != "simulated")

    def _same_gpus(self) -> int:
        snap = self.snapshot
        if snap is None or not snap.gpus:
            return 0
        return sum(1 for g in snap.gpus if g.name == snap.gpus[0].name and not g.lost)

    def set_snapshot(self, snapshot: MachineSnapshot, simulate: str | None) -> None:
        """Offer this machine's GPUs, preselect `simulate` or the detected GPUs."""
        self.snapshot = snapshot
        options: list[tuple[str, str]] = []
        notes: list[str] = []
        if snapshot.has_gpu:
            first = snapshot.gpus[0]
            profile = find_gpu_profile(first.profile_id or first.name)
            self.detected_profile = profile
            simulated = " (simulated)" if snapshot.backend == "simulated" else ""
            if profile is not None:
                label = (
                    f"this machine: {self._same_gpus()}x {first.name} "
                    f"({first.memory_total_bytes / GIB:.0f} GiB){simulated}"
                )
                options.append((label, DETECTED))
            else:
                notes.append(
                    f"{first.name} has no built-in profile (needed for its speed): pick the "
                    "closest GPU below"
                )
        options += [(f"{p.id} · {p.name} · {p.memory_gb:g} GB", p.id) for p in gpu_profiles()]
        choice, count = self._default(snapshot, simulate, notes)
        select = self.query_one("#gpu-select", Select)
        with self.prevent(Select.Changed, Input.Changed):
            select.set_options(options)
            select.value = choice
            self.query_one("#gpu-count", Input).value = str(count)
            self.query_one("#gpu-device", Select).value = "auto" if self.has_real_gpu else "cpu"
        if not self.has_real_gpu:
            why = snapshot.no_gpu_reason or "the GPUs shown are simulated"
            notes.append(f"No GPU to train on here ({why}): runs launch on the CPU.")
        self.query_one("#gpu-note", Static).update(Text("\n".join(notes), style="dim"))

    def _default(
        self, snapshot: MachineSnapshot, simulate: str | None, notes: list[str]
    ) -> tuple[str, int]:
        if simulate:
            try:
                profiles = parse_simulate_spec(simulate)
                return profiles[0].id, len(profiles)
            except FtuiError as error:
                notes.append(error.message)
        if snapshot.has_gpu and self.detected_profile is not None:
            return DETECTED, max(1, self._same_gpus())
        if not snapshot.has_gpu:
            notes.append(f"Planning for {DEFAULT_PROFILE}: pick the GPU you will rent.")
        return DEFAULT_PROFILE, 1

    # -- values ----------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.snapshot is not None

    @property
    def device(self) -> str:
        return str(self.query_one("#gpu-device", Select).value)

    def set_device(self, device: str) -> None:
        self.query_one("#gpu-device", Select).value = device

    def count(self) -> int:
        text = self.query_one("#gpu-count", Input).value.strip()
        try:
            count = int(text)
        except ValueError:
            raise FtuiError(
                f"GPU count {text!r} is not a number" if text else "GPU count is empty",
                "type how many GPUs to plan for",
            ) from None
        if count < 1:
            raise FtuiError(f"GPU count must be at least 1 (got {count})", "e.g. 1 or 8")
        return count

    def machine(self) -> Machine:
        """The machine to plan for; raises FtuiError with the fix."""
        value = self.query_one("#gpu-select", Select).value
        if value is Select.NULL or self.snapshot is None:
            raise FtuiError("no GPU picked yet", "pick the GPU to plan for")
        count = self.count()
        if value == DETECTED:
            snap = self.snapshot
            assert self.detected_profile is not None and snap.gpus
            here = self._same_gpus()
            if count > here:
                raise FtuiError(
                    f"this machine has {here} {snap.gpus[0].name}",
                    f"use {here} GPU(s) or fewer, or plan for a GPU profile",
                )
            detected = snap.backend != "simulated"
            return Machine(self.detected_profile, count, snap.gpus[0].memory_total_bytes, detected)
        profile = find_gpu_profile(str(value))
        if profile is None:  # the options are profile ids: cannot happen
            raise FtuiError(f"unknown GPU {value!r}", "pick one from the list")
        return Machine(profile, count, profile.memory_total_bytes, False)

    # -- events ----------------------------------------------------------------------------------
    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id in ("gpu-select", "gpu-device"):
            event.stop()
            if event.value is Select.NULL:  # transient, while the options are replaced
                return
            self.post_message(self.Changed("gpu" if event.select.id == "gpu-select" else "device"))

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "gpu-count":
            event.stop()
            self.post_message(self.Changed("count"))
