"""What a launch from the wizard would run: the run spec (built the way `ftui launch` builds
one), its YAML, the exact command, the same launch as an `ftui launch` command line, and the
CLI's rule for which models can launch."""

from __future__ import annotations

import shlex
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
from engine.run.spec import Budget, Hyper, Preference, RunSpec
from engine.training_config import TrainingConfig
from tui.cli.runs import default_lr
from tui.screens.plan.model_picker import has_weights
from tui.screens.plan.options import RunOptions

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
    budget: Budget | None = None,
    options: RunOptions | None = None,
) -> RunSpec:
    """A spec with `ftui launch`'s defaults (its learning rate for the stage and method), and
    the run options (tracker, beta, loss type, the run to start from) as typed."""
    data_path = str(Path(data).expanduser().absolute()) if data else ""
    lr = default_lr(config.stage, config.method, "pretrained")
    o = options or RunOptions()
    return RunSpec(
        model=model,
        model_path=model_path,
        data=data_path,
        device=device,
        from_run=o.from_run,
        training=config,
        preference=Preference(beta=o.beta, loss_type=o.loss_type),
        hyper=Hyper(epochs=epochs, learning_rate=lr, report_to=o.report_to),
        plan=summary or None,
        budget=budget or Budget(),
    )


def cli_command(spec: RunSpec, model: str) -> str:
    """`ftui launch` with the flags that give this spec's setup (`model`: what the CLI takes:
    a profile, a local directory or an HF id)."""
    t = spec.training
    argv = ["ftui", "launch", "--model", model, "--data", spec.data or "<dataset>"]
    argv += ["--stage", t.stage, "--method", t.method, "--epochs", f"{spec.hyper.epochs:g}"]
    if spec.device == "cpu":
        argv += ["--device", "cpu"]
    else:
        argv += ["--num-gpus", str(t.num_gpus)]
    argv += ["--seq-len", str(t.seq_len), "--batch", str(t.batch)]
    argv += ["--grad-accum", str(t.grad_accum)]
    if t.is_peft:
        argv += ["--rank", str(t.rank), "--alpha", str(t.alpha), "--targets", ",".join(t.targets)]
    argv += ["--grad-ckpt" if t.grad_ckpt else "--no-grad-ckpt"]
    argv += ["--attn", t.attn, "--dtype", t.dtype, "--optim", t.optim]
    if t.sharding != "none":
        argv += ["--sharding", t.sharding]
    if t.offload != "none":
        argv += ["--offload", t.offload]
    p = spec.preference
    argv += RunOptions(spec.hyper.report_to, p.beta, p.loss_type, spec.from_run).flags(t.stage)
    for flag, cap in (("--max-cost", spec.budget.max_cost), ("--max-hours", spec.budget.max_hours)):
        if cap is not None:
            argv += [flag, f"{cap:g}"]
    return shlex.join(argv)


def launch_shell(spec: RunSpec) -> str:
    from engine.run.launch import build_launch

    return str(build_launch(spec, RUN_DIR_PLACEHOLDER).to_dict()["shell"])


class SpecPane(VerticalScroll):
    """The exact command and spec.yaml a launch would use, and the same launch from a shell."""

    def compose(self) -> ComposeResult:
        yield Label("The same launch from the command line:")
        yield Static("", id="spec-cli")
        yield Label("The command that will run (in the run's folder):")
        yield Static("", id="spec-command")
        yield Label("spec.yaml (ctrl+w saves it):")
        yield Static("", id="spec-yaml")

    def show(self, spec: RunSpec | None, model: str = "") -> None:
        yaml_box = self.query_one("#spec-yaml", Static)
        command_box = self.query_one("#spec-command", Static)
        cli_box = self.query_one("#spec-cli", Static)
        if spec is None:
            yaml_box.update(Text("Pick a model to see the spec.", style="dim"))
            command_box.update("")
            cli_box.update("")
            return
        yaml_box.update(Text(spec.to_yaml()))
        cli_box.update(Text(cli_command(spec, model or spec.model)))
        try:
            shell = launch_shell(spec)
        except (FtuiError, ValueError) as error:
            shell = f"(no command: {error})"
        command_box.update(Text(shell))
