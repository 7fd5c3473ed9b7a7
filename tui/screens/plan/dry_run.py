"""What ctrl+d does in the plan wizard: the tier-2 dry run (real steps on fake tensors) of the
current setup in a cancellable thread worker. A mixin of `PlanWizardScreen`, which holds the
state it reads."""

from __future__ import annotations

from textual import work
from textual.message import Message
from textual.screen import Screen
from textual.worker import get_current_worker

from engine.errors import FtuiError
from engine.models import ModelArch
from engine.plan.dryrun.entry import DryRunResult
from engine.training_config import ConfigError, TrainingConfig
from tui.screens.plan.summary import DryRunView


class DryRunDone(Message):
    def __init__(
        self, config: TrainingConfig, result: DryRunResult | None, error: str | None
    ) -> None:
        super().__init__()
        self.config = config
        self.result = result
        self.error = error


class DryRunActions(Screen[None]):
    """The dry-run part of the wizard (PlanWizardScreen sets every attribute below)."""

    arch: ModelArch | None
    config: TrainingConfig | None
    setup_error: FtuiError | None
    knob_error: ConfigError | None
    dry: DryRunView
    dry_config: TrainingConfig | None

    def _render_summary(self) -> None:
        raise NotImplementedError

    def action_dry_run(self) -> None:
        if self.dry.running:
            self.workers.cancel_group(self, "dryrun")
            self.dry = DryRunView(error="cancelled")
            self._render_summary()
            return
        if (
            self.arch is None
            or self.config is None
            or self.knob_error is not None
            or self.setup_error is not None
        ):
            self.notify("Pick a model and a valid setup first.", severity="warning", markup=False)
            return
        self.dry_config = self.config
        self.dry = DryRunView(running=True)
        self._render_summary()
        self._dry_worker(self.arch, self.config)

    @work(thread=True, exclusive=True, group="dryrun")
    def _dry_worker(self, arch: ModelArch, config: TrainingConfig) -> None:
        from engine.plan.dryrun.entry import dry_run

        worker = get_current_worker()
        result: DryRunResult | None = None
        error: str | None = None
        try:
            result = dry_run(arch, config)
        except FtuiError as exc:
            error = exc.message
        except Exception as exc:  # a missing torch, an exotic architecture...
            error = f"{type(exc).__name__}: {exc}"
        if not worker.is_cancelled:
            self.post_message(DryRunDone(config, result, error))

    def on_dry_run_done(self, message: DryRunDone) -> None:
        if not self.dry.running or message.config != self.dry_config:
            return
        self.dry = DryRunView(result=message.result, error=message.error)
        self._render_summary()
