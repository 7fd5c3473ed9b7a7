"""What ctrl+l and ctrl+w do in the plan wizard: the checks a launch needs (shown under the
plan as they change), saving the spec, launching it in a thread worker and opening its
dashboard. A mixin of `PlanWizardScreen`, which holds the state it reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Static

from engine.data import DataReport
from engine.errors import FtuiError
from engine.models import ModelArch
from engine.plan.planner import Candidate, Machine
from engine.run.spec import RunSpec
from engine.training_config import ConfigError
from tui.cli.money import priced
from tui.screens.plan.dataset import DatasetPanel
from tui.screens.plan.dialogs import SaveSpecScreen
from tui.screens.plan.machine import MachinePicker
from tui.screens.runs.screen import OpenDashboard


class LaunchDone(Message):
    def __init__(self, run_id: str | None, error: str | None) -> None:
        super().__init__()
        self.run_id = run_id
        self.error = error


class LaunchActions(Screen[None]):
    """The launching half of the wizard (PlanWizardScreen sets every attribute below)."""

    arch: ModelArch | None
    machine: Machine | None
    current: Candidate | None
    setup_error: FtuiError | None
    knob_error: ConfigError | None
    budget_error: FtuiError | None
    options_error: FtuiError | None
    report: DataReport | None
    report_path: str | None
    launching: bool

    def local_model(self) -> tuple[str, str]:
        raise NotImplementedError

    def build_spec(self) -> RunSpec | None:
        raise NotImplementedError

    def _plan_summary(self) -> dict[str, Any]:
        raise NotImplementedError

    def launch_problems(self) -> list[str]:
        """Why ctrl+l would refuse now (empty: ready)."""
        problems: list[str] = []
        if self.arch is None:
            return ["pick a model"]
        try:
            self.local_model()
        except FtuiError as error:
            problems.append(str(error))
        if self.setup_error is not None:
            problems.append(self.setup_error.message)
        if self.knob_error is not None:
            problems.append(f"fix the setup: {self.knob_error.message}")
        if self.budget_error is not None:
            problems.append(f"fix the budget: {self.budget_error.message}")
        if self.options_error is not None:
            problems.append(f"fix the run options: {self.options_error.message}")
        panel = self.query_one(DatasetPanel)
        if panel.checking:
            problems.append("the dataset is still being checked")
        elif self.report is None or self.report_path != panel.path:
            problems.append("check a dataset: type its path and press enter")
        elif self.report.invalid:
            problems.append(
                f"the dataset has {len(self.report.invalid)} invalid record(s): fix them "
                f"(`ftui data check {self.report_path}`)"
            )
        elif not self.report.valid:
            problems.append("the dataset has no valid record")
        elif self.current is not None:
            from engine.run.preflight import check_format

            try:  # the stage reads this format (`ftui launch`'s pre-flight rule)
                check_format(self.report.format, self.current.config.stage, self.report_path)
            except FtuiError as error:
                problems.append(error.message)
        picker = self.query_one(MachinePicker)
        if picker.device != "cpu" and self.machine is not None:
            if not picker.has_real_gpu:
                problems.append("no GPU here to train on: set “run on” to cpu")
            elif not self.machine.detected:
                problems.append(
                    "the plan is for another GPU than this machine's: pick “this machine” "
                    "to launch here"
                )
            elif self.current is not None and not self.current.fits:
                problems.append("the setup does not fit the GPU: pick a runner-up or shrink it")
        if self.launching:
            problems.append("a launch is under way")
        return problems

    def _refresh_readiness(self) -> None:
        box = self.query_one("#launch-readiness", Static)
        problems = self.launch_problems()
        if not problems:
            device = self.query_one(MachinePicker).device
            box.update(Text(f"Ready: ctrl+l launches it (run on {device}).", style="bold green"))
        else:
            box.update(Text("Launch (ctrl+l) needs:\n• " + "\n• ".join(problems), style="dim"))
        box.set_class(not problems, "-ready")

    # -- save, launch ----------------------------------------------------------------------------
    def action_save_spec(self) -> None:
        spec = self.build_spec()
        if spec is None:
            self.notify(
                "Pick a model first: there is no spec yet.", severity="warning", markup=False
            )
            return
        text = spec.to_yaml()
        default = f"{Path(spec.model).name or 'run'}-spec.yaml"

        def save(answer: tuple[Path, bool] | None) -> None:
            if answer is None:
                return
            path, overwrite = answer
            try:
                with path.open("w" if overwrite else "x", encoding="utf-8") as fh:
                    fh.write(text)
            except FileExistsError:
                self.notify(
                    f"{path} appeared meanwhile: not overwritten.", severity="error", markup=False
                )
                return
            except OSError as error:
                self.notify(f"cannot write {path}: {error}", severity="error", markup=False)
                return
            self.notify(f"spec saved to {path} (launch it: ftui launch {path})", markup=False)

        self.app.push_screen(SaveSpecScreen(default), save)

    def action_launch(self) -> None:
        problems = self.launch_problems()
        if problems:
            self.notify(
                "Cannot launch yet:\n• " + "\n• ".join(problems),
                severity="error",
                timeout=10,
                markup=False,
            )
            return
        spec = self.build_spec()
        assert spec is not None
        summary = self._plan_summary()
        try:
            spec.validate()
            spec = priced(spec, summary, None)  # the price a budget cap is counted in
        except FtuiError as error:
            self.notify(str(error), severity="error", timeout=10, markup=False)
            return
        self.launching = True
        self._refresh_readiness()
        self.notify(f"launching {spec.model}…", markup=False)
        self._launch_worker(spec, summary)

    @work(thread=True, exclusive=True, group="launch")
    def _launch_worker(self, spec: RunSpec, summary: dict[str, Any]) -> None:
        from engine.run.operations import launch

        try:
            run = launch(spec, plan_summary=summary)
        except FtuiError as error:
            self.post_message(LaunchDone(None, str(error)))
        except Exception as exc:
            self.post_message(LaunchDone(None, f"launch failed: {type(exc).__name__}: {exc}"))
        else:
            self.post_message(LaunchDone(run.run_id, None))

    def on_launch_done(self, message: LaunchDone) -> None:
        self.launching = False
        self._refresh_readiness()
        if message.run_id is None:
            self.notify(
                message.error or "launch failed", severity="error", timeout=10, markup=False
            )
            return
        self.notify(f"launched {message.run_id}", markup=False)
        self.post_message(OpenDashboard(message.run_id))
