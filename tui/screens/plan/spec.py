"""What a launch from the wizard would run: the run spec (built the way `ftui launch` builds
one), its YAML and the exact command, and the CLI's rule for which models can launch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Label, Static

from engine.errors import FtuiError
from engine.models import ModelArch
from engine.plan.planner import Candidate, Machine
from engine.run.spec import Hyper, RunSpec
from engine.training_config import TrainingConfig
from tui.screens.plan.model_picker import has_weights

RUN_DIR_PLACEHOLDER = Path("<run-dir>")


def local_weights(arch: ModelArch, cached: Callable[[str | None], str | None]) -> tuple[str, str]:
    """(name for the spec, local directory with weights), as `ftui launch` decides it: a
    directory or HF-cache model must hold weights; a profile launches only when its HF id is
    in the local cache (`cached(hf_id)` finds it). Raises FtuiError with the fix."""
    if arch.source in ("dir", "hf-cache") and arch.path:
        if not has_weights(arch.path):
            raise FtuiError(
                f"{arch.path} has a config.json but no weights (*.safetensors)",
                "point the model at a directory with the model's weights",
            )
        return (arch.hf_id or arch.name), arch.path
    path = cached(arch.hf_id)
    if path and arch.hf_id:
        return arch.hf_id, path
    raise FtuiError(
        f"the weights of {arch.name} ({arch.hf_id}) are not on this machine",
        f"download them first (`hf download {arch.hf_id}`), or type a local model directory",
    )


def plan_summary(c: Candidate, machine: Machine) -> dict[str, Any]:
    """The estimate a run is launched with (`plan.json`), the fields `ftui launch` writes."""
    return {
        "gpu": machine.gpu.id,
        "gpu_count": c.config.num_gpus,
        "device_gib": round(c.memory.device_gib, 2),
        "reserved_gib": round(c.memory.reserved_gib, 2),
        "allocated_gib": round(c.memory.allocated_gib, 2),
        "peak_phase": c.memory.peak_phase,
        "tokens_per_s": round(c.tokens_per_s, 1),
    }


def build_spec(
    *,
    model: str,
    model_path: str | None,
    data: str,
    device: str,
    config: TrainingConfig,
    epochs: float,
    summary: dict[str, Any],
) -> RunSpec:
    """A spec with `ftui launch`'s defaults (learning rate 2e-5 for full, 2e-4 for adapters)."""
    data_path = str(Path(data).expanduser().absolute()) if data else ""
    return RunSpec(
        model=model,
        model_path=model_path,
        data=data_path,
        device=device,
        training=config,
        hyper=Hyper(epochs=epochs, learning_rate=2e-5 if config.method == "full" else 2e-4),
        plan=summary or None,
    )


def launch_shell(spec: RunSpec) -> str:
    from engine.run.launch import build_launch

    return str(build_launch(spec, RUN_DIR_PLACEHOLDER).to_dict()["shell"])


class SpecPane(VerticalScroll):
    """The exact command and spec.yaml a launch would use."""

    def compose(self) -> ComposeResult:
        yield Label("The command that will run (in the run's folder):")
        yield Static("", id="spec-command")
        yield Label("spec.yaml (ctrl+w saves it):")
        yield Static("", id="spec-yaml")

    def show(self, spec: RunSpec | None) -> None:
        yaml_box = self.query_one("#spec-yaml", Static)
        command_box = self.query_one("#spec-command", Static)
        if spec is None:
            yaml_box.update(Text("Pick a model to see the spec.", style="dim"))
            command_box.update("")
            return
        yaml_box.update(Text(spec.to_yaml()))
        try:
            shell = launch_shell(spec)
        except (FtuiError, ValueError) as error:
            shell = f"(no command: {error})"
        command_box.update(Text(shell))
