"""The plan wizard: pick a model, a dataset and GPUs; see the recommended setup with its
memory breakdown, speed, ETA and cost; edit any knob and watch the estimate follow (the
analytic tier runs on the UI thread: microseconds); check it with a dry run (a thread
worker); save the exact spec, or launch it.

How the knobs work: the planner fills them with its recommendation (the method select
drives it: auto lets the planner choose). A knob the user edits is re-estimated at once and
pinned: the next recommendation (ctrl+r, a new method, model, GPU or dataset) keeps it, until
"Unpin all" (a new model only drops a pinned sequence length).

Layout: the numbered panes (model, dataset, GPUs, setup) on the left, the plan on the right;
below 110 columns one side at a time, ctrl+o switches. Keys: a form, so the app's letters are
off here (escape goes back, f1 helps) and stray letters reach an input (keys.py).
"""

from __future__ import annotations

import math
from typing import Any

from rich.text import Text
from textual import events, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.timer import Timer
from textual.widgets import (
    Button,
    DataTable,
    Footer,
    Header,
    Label,
    Static,
    TabbedContent,
    TabPane,
)

from engine.data import DataReport
from engine.errors import FtuiError
from engine.machine.hardware import MachineSnapshot, NvmlBackend
from engine.models import ModelArch
from engine.plan.estimator import count_params
from engine.plan.methods import check_architecture
from engine.plan.planner import (
    DEFAULT_TRAIN_TOKENS,
    Candidate,
    Machine,
    Plan,
    PlanRequest,
    evaluate,
    plan,
    suggest,
)
from engine.run.spec import Budget, RunSpec
from engine.training_config import ConfigError, TrainingConfig
from tui.screens.plan.budget import BudgetPanel
from tui.screens.plan.dataset import DatasetPanel
from tui.screens.plan.dry_run import DryRunActions
from tui.screens.plan.hub import HubPanel, is_hub_name
from tui.screens.plan.keys import route_typing
from tui.screens.plan.knobs import KnobsPanel, check_seq_len
from tui.screens.plan.launching import LaunchActions
from tui.screens.plan.machine import MachinePicker
from tui.screens.plan.model_picker import (
    ModelChoice,
    ModelPicker,
    choice_from_arch,
    resolve_choice,
)
from tui.screens.plan.options import OptionsPanel, RunOptions
from tui.screens.plan.spec import SpecPane, build_spec, local_weights, plan_summary
from tui.screens.plan.summary import DryRunView, PlanSummary, RunnersUpTable, SummaryView

HEADROOM = 0.90
RECHECK_SECONDS = 0.4  # debounce: re-check the dataset's truncation after seq-len edits


class MachineRead(Message):
    def __init__(self, snapshot: MachineSnapshot) -> None:
        super().__init__()
        self.snapshot = snapshot


class PlanWizardScreen(LaunchActions, DryRunActions):
    FORM = True  # the app's letter keys are off here (tui/app.py)
    # Below 110 columns the plan beside the panes would be a sliver: one side at a time.
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    BINDINGS = [
        Binding("ctrl+o", "other_pane", "Setup/Plan", priority=True),  # first: narrow footers
        Binding("escape", "app.show_mode('machine')", "Back"),
        # priority: the knob inputs bind some of these keys (ctrl+w deletes a word).
        Binding("ctrl+r", "replan", "Recommend", priority=True),
        Binding("ctrl+d", "dry_run", "Dry run", priority=True),
        Binding("ctrl+w", "save_spec", "Save spec", priority=True),
        Binding("ctrl+l", "launch", "Launch", priority=True),
        Binding("ctrl+t", "toggle_tab", "Plan/Spec", priority=True),
        Binding("ctrl+g", "download_weights", "Download", priority=True),  # shown when offered
    ]

    def __init__(
        self, backend: NvmlBackend, *, simulate: str | None = None, model: str | None = None
    ) -> None:
        super().__init__()
        self.backend = backend
        self.simulate = simulate
        self.initial_model = model
        self.arch: ModelArch | None = None
        self.machine: Machine | None = None
        self.config: TrainingConfig | None = None
        self.epochs = 1.0
        self.pinned: dict[str, Any] = {}
        self.plan_result: Plan | None = None
        self.current: Candidate | None = None
        self.setup_error: FtuiError | None = None  # model/GPU/plan problem
        self.knob_error: ConfigError | None = None
        self.budget = Budget()  # the caps typed under 5 · Launch
        self.budget_error: FtuiError | None = None
        self.options = RunOptions()  # tracker, beta, loss type, from-run under 5 · Launch
        self.options_error: FtuiError | None = None
        self.report: DataReport | None = None
        self.report_path: str | None = None
        self.dry = DryRunView()
        self.dry_config: TrainingConfig | None = None
        self.launching = False
        self._recheck: Timer | None = None

    # -- layout ----------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="wizard"):
            with VerticalScroll(id="wizard-left", can_focus=False):
                with Vertical(id="sec-model", classes="wizard-section") as section:
                    section.border_title = "1 · Model"
                    yield ModelPicker(id="model-picker")
                    yield Static("", id="model-chosen")
                    yield HubPanel(id="hub-panel")
                with Vertical(id="sec-data", classes="wizard-section") as section:
                    section.border_title = "2 · Dataset"
                    yield DatasetPanel(id="dataset")
                with Vertical(id="sec-gpu", classes="wizard-section") as section:
                    section.border_title = "3 · GPUs"
                    yield MachinePicker(id="machine-picker")
                with Vertical(id="sec-knobs", classes="wizard-section") as section:
                    section.border_title = "4 · Setup"
                    yield KnobsPanel(id="knobs")
                with Vertical(id="sec-launch", classes="wizard-section") as section:
                    section.border_title = "5 · Launch"
                    yield BudgetPanel(id="budget")
                    yield OptionsPanel(id="options")
            with TabbedContent(id="wizard-right"):
                with TabPane("Plan", id="tab-plan"), VerticalScroll(id="plan-scroll"):
                    yield PlanSummary("", id="summary")
                    yield Static("", id="launch-readiness")
                    yield Label("Runners-up (enter or click makes one the current setup)")
                    yield RunnersUpTable(id="runners")
                with TabPane("Spec & command", id="tab-spec"):
                    yield SpecPane(id="spec-scroll")
        yield Footer()

    def on_mount(self) -> None:
        self.title = "ftui"
        self.sub_title = "plan"
        self.query_one(KnobsPanel).show(TrainingConfig(), self.epochs)
        self._render_summary()
        self._refresh_spec()
        self.query_one("#model-filter").focus()
        self.read_machine()
        if self.initial_model:
            self._pick_named(self.initial_model)

    # -- keys and panes --------------------------------------------------------------------------
    def on_key(self, event: events.Key) -> None:
        route_typing(self, event)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "other_pane":
            return self.has_class("-narrow")
        if action == "download_weights":
            return self.query_one(HubPanel).ready
        return True

    def action_other_pane(self) -> None:
        """Narrow terminals: show the plan instead of the panes, or back."""
        showing_plan = not self.has_class("-show-plan")
        self.set_class(showing_plan, "-show-plan")
        if showing_plan:
            self.query_one("#wizard-right").query("ContentTabs").first().focus()
        else:
            self.query_one("#model-filter").focus()

    # -- the machine -----------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="nvml")
    def read_machine(self) -> None:
        self.post_message(MachineRead(self.backend.snapshot()))

    def on_machine_read(self, message: MachineRead) -> None:
        self.query_one(MachinePicker).set_snapshot(message.snapshot, self.simulate)
        self._machine_changed()

    def on_machine_picker_changed(self, message: MachinePicker.Changed) -> None:
        if message.what == "device":
            self._refresh_spec()
            self._refresh_readiness()
        else:
            self._machine_changed()

    def _machine_changed(self) -> None:
        try:
            self.machine = self.query_one(MachinePicker).machine()
        except FtuiError as error:
            self.machine = None
            self._show_setup_error(error)
            return
        self.setup_error = None
        self.replan()

    # -- the model -------------------------------------------------------------------------------
    def _pick_named(self, name: str) -> None:
        choice = self.query_one(ModelPicker).choice_named(name)
        if choice is None and is_hub_name(name):
            self.query_one(HubPanel).resolve(name)  # the hub may be slow: in a worker
            return
        if choice is None:
            from engine.models import resolve_model

            try:
                choice = choice_from_arch(resolve_model(name))
            except FtuiError as error:
                self._show_model_error(error)
                return
        self._use_choice(choice)

    def on_hub_panel_resolved(self, message: HubPanel.Resolved) -> None:
        if message.arch is None:
            self.query_one(HubPanel).hide()
            self._show_model_error(message.error or FtuiError(f"cannot fetch {message.name}"))
            return
        self._use_choice(choice_from_arch(message.arch))

    def on_hub_panel_downloaded(self, message: HubPanel.Downloaded) -> None:
        self.query_one(ModelPicker).scan_cache()  # a profile finds its weights there
        self._show_chosen()
        self._refresh_spec()
        self._refresh_readiness()

    def action_download_weights(self) -> None:
        if not self.query_one(HubPanel).start():
            self.notify("nothing to download: the weights are here, or the hub said no")

    def on_model_picker_picked(self, message: ModelPicker.Picked) -> None:
        self._use_choice(message.choice)

    def _use_choice(self, choice: ModelChoice) -> None:
        try:
            arch = resolve_choice(choice)
        except FtuiError as error:
            self._show_model_error(error)
            return
        self.arch = arch
        self.pinned.pop("seq_len", None)  # the default follows the model's context
        self.dry, self.dry_config = DryRunView(), None
        self._show_chosen()
        self.replan()

    def _show_chosen(self) -> None:
        arch = self.arch
        if arch is None:
            return
        params = count_params(arch).total
        hub = self.query_one(HubPanel)
        try:
            _name, path = self.local_model()
            weights = Text(f" · weights at {path}", style="green")
            hub.hide()
        except FtuiError:
            weights = Text(" · weights not on this machine (plan only)", style="yellow")
            if arch.hf_id:
                hub.show_missing(arch.hf_id)
            else:
                hub.hide()
        line = Text()
        line.append(arch.name, "bold")
        line.append(f" · {arch.model_type} · {params / 1e9:.2f}B parameters · {arch.source}")
        line.append_text(weights)
        self.query_one("#model-chosen", Static).update(line)

    def on_model_picker_cache_ready(self, message: ModelPicker.CacheReady) -> None:
        # A profile's weights may sit in the HF cache: the model line and spec follow.
        self._show_chosen()
        self._refresh_spec()
        self._refresh_readiness()

    def _show_model_error(self, error: FtuiError) -> None:
        self.query_one("#model-chosen", Static).update(Text(str(error), style="bold red"))

    def local_model(self) -> tuple[str, str]:
        """(name for the spec, local directory with weights); raises FtuiError."""
        if self.arch is None:
            raise FtuiError("no model picked", "pick a model first")
        return local_weights(self.arch, self.query_one(ModelPicker).cached_weights_for)

    # -- planning --------------------------------------------------------------------------------
    def _train_tokens(self) -> int:
        preference = self.report.preference if self.report is not None else None
        if preference and preference.get("tokens"):  # both sides of each pair, as `ftui plan`
            return int(preference["tokens"])
        if self.report is not None and self.report.lengths is not None:
            return max(1, self.report.lengths.total)
        return DEFAULT_TRAIN_TOKENS

    def _default_seq_len(self) -> int:
        assert self.arch is not None
        max_pos = self.arch.max_positions
        if self.report is not None and self.report.lengths is not None:
            wanted = max(256, math.ceil(self.report.lengths.p99 / 256) * 256)
            return min(wanted, max_pos or wanted)
        return min(2048, max_pos or 2048)

    def _request(self, pinned: dict[str, Any]) -> PlanRequest:
        assert self.arch is not None and self.machine is not None
        return PlanRequest(
            arch=self.arch,
            machine=self.machine,
            pinned=pinned,
            headroom=HEADROOM,
            train_tokens=self._train_tokens(),
            epochs=self.epochs,
        )

    def replan(self) -> None:
        """Ask the planner (milliseconds) for the best setup around the pinned knobs."""
        if self.arch is None or self.machine is None:
            self._render_summary()
            self._refresh_spec()
            return
        knobs = self.query_one(KnobsPanel)
        pinned = dict(self.pinned)
        pinned["stage"] = knobs.stage
        if knobs.method != "auto":
            pinned["method"] = knobs.method
        if knobs.stage == "kto":
            pinned.setdefault("batch", 2)  # KTO's KL term needs other samples (as `ftui launch`)
        pinned["num_gpus"] = self.machine.count
        pinned.setdefault("seq_len", self._default_seq_len())
        knobs.show_pins(self.pinned)
        try:
            # The CLI's refusal of a method the model cannot take (bias on a bias-free model).
            check_architecture(knobs.method, self.arch.config)
        except FtuiError as error:
            knobs.show_error(error)  # beside the method, also where the plan is hidden
            self._show_setup_error(error)
            return
        try:
            check_seq_len(self.arch, int(pinned["seq_len"]))
            probe = {**pinned, "method": pinned.get("method", "lora")}
            TrainingConfig(**probe).validate()  # the error names the knob, not a combination
            result = plan(self._request(pinned))
        except FtuiError as error:
            self._show_setup_error(error)
            return
        self.setup_error = None
        self.plan_result = result
        rows = ([result.best] if result.best else []) + [
            c for c in result.alternatives if c is not result.best
        ]
        self.query_one(RunnersUpTable).show(rows, result.best)
        chosen = result.best or (result.alternatives[0] if result.alternatives else None)
        if chosen is None:  # the planner always returns a closest setup; be safe anyway
            self._show_setup_error(FtuiError("the planner found no setup", "change the knobs"))
            return
        self._set_config(chosen.config)

    def _set_config(self, config: TrainingConfig) -> None:
        self.config = config
        self.knob_error = None
        self.query_one(KnobsPanel).show(config, self.epochs)
        self._evaluate()

    def _evaluate(self) -> None:
        """The analytic estimate of the current setup (microseconds), then every view."""
        if self.config is None or self.arch is None or self.machine is None:
            return
        self.current = evaluate(self._request(self.pinned), self.config)
        self.setup_error = None
        self._render_summary()
        self._refresh_spec()
        dataset = self.query_one(DatasetPanel)
        dataset.seq_len = self.config.seq_len
        if self.report is not None and self.report.seq_len != self.config.seq_len:
            self._schedule_recheck()

    def _title(self) -> str:
        result = self.plan_result
        if result is None or self.config is None:
            return "Setup"
        if result.best is not None and self.config == result.best.config:
            if not result.best.fits:
                return "Nothing fits; this setup"
            return "Recommended" if result.recommending else "Estimate"
        if any(self.config == c.config for c in result.alternatives):
            return "Runner-up" if result.best is not None else "Closest setup (nothing fits)"
        return "Your setup"

    def _render_summary(self) -> None:
        summary = self.query_one(PlanSummary)
        if self.setup_error is not None:
            error = self.setup_error
            summary.show(None, f"{error.message}\nfix: {error.fix}" if error.fix else error.message)
            summary.set_class(True, "-nofit")
        elif self.arch is None:
            summary.show(None, "Pick a model on the left (type to filter, enter to pick).")
        elif self.machine is None or self.current is None:
            summary.show(None, "Reading the GPUs…")
        else:
            c = self.current
            suggestions: tuple[str, ...] = ()
            if not c.fits:
                try:
                    suggestions = tuple(suggest(self._request(self.pinned), c.config))
                except FtuiError:
                    suggestions = ()
            dry = self.dry
            if dry.result is not None or dry.error:
                dry = DryRunView(
                    result=dry.result, error=dry.error, stale=self.dry_config != self.config
                )
            summary.show(
                SummaryView(
                    candidate=c,
                    machine=self.machine,
                    headroom=HEADROOM,
                    train_tokens=self._train_tokens() * self.epochs,
                    title=self._title(),
                    suggestions=suggestions,
                    dry=dry,
                    tokens_from_dataset=self.report is not None and self.report.lengths is not None,
                )
            )
        summary.set_class(self.knob_error is not None, "-stale")
        self._refresh_readiness()

    def _show_setup_error(self, error: FtuiError) -> None:
        self.setup_error = error
        self.current = None
        self._render_summary()
        self._refresh_spec()

    # -- knobs -----------------------------------------------------------------------------------
    def on_knobs_panel_method_chosen(self, message: KnobsPanel.MethodChosen) -> None:
        self.query_one(OptionsPanel).show_stage(self.query_one(KnobsPanel).stage)
        self._read_options()  # a loss type belongs to its stage
        self.replan()

    def on_options_panel_changed(self, message: OptionsPanel.Changed) -> None:
        self._read_options()
        self._refresh_spec()
        self._refresh_readiness()

    def _read_options(self) -> None:
        panel = self.query_one(OptionsPanel)
        try:
            self.options, self.options_error = panel.read(self.query_one(KnobsPanel).stage), None
        except FtuiError as error:
            self.options, self.options_error = RunOptions(), error
        panel.show_error(self.options_error)

    def on_knobs_panel_edited(self, message: KnobsPanel.Edited) -> None:
        knobs = self.query_one(KnobsPanel)
        base = self.config or TrainingConfig()
        try:
            config, epochs = knobs.read(base)
            if self.arch is not None:
                check_seq_len(self.arch, config.seq_len)
        except ConfigError as error:
            self.knob_error = error
            knobs.show_error(error)
            self._render_summary()
            self._refresh_spec()
            return
        self.knob_error = None
        knobs.show_error(None)
        self.epochs = epochs
        name = message.name
        # Pin what the user changed; a field that still shows the setup's value (an echo of
        # filling the fields) pins nothing.
        if name != "epochs" and getattr(config, name) != getattr(base, name):
            self.pinned[name] = getattr(config, name)
            knobs.show_pins(self.pinned)
        if self.config is None:  # no model yet: the pins wait for the first recommendation
            self._render_summary()
            return
        self.config = config
        self._evaluate()

    def on_budget_panel_changed(self, message: BudgetPanel.Changed) -> None:
        panel = self.query_one(BudgetPanel)
        try:
            self.budget, self.budget_error = panel.read(), None
        except FtuiError as error:
            self.budget, self.budget_error = Budget(), error
        panel.show_error(self.budget_error)
        self._refresh_spec()
        self._refresh_readiness()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "knob-replan":
            self.replan()
        elif event.button.id == "knob-unpin":
            self.pinned.clear()
            self.query_one(KnobsPanel).set_method("auto")
            self.replan()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id != "runners":
            return
        event.stop()
        table = self.query_one(RunnersUpTable)
        index = int(str(event.row_key.value))
        if index < len(table.candidates):
            self._set_config(table.candidates[index].config)

    def action_replan(self) -> None:
        self.replan()

    def action_toggle_tab(self) -> None:
        tabs = self.query_one(TabbedContent)
        tabs.active = "tab-spec" if tabs.active == "tab-plan" else "tab-plan"

    # -- dataset ---------------------------------------------------------------------------------
    def on_dataset_panel_checked(self, message: DatasetPanel.Checked) -> None:
        self.report = message.report
        self.report_path = message.path if message.report is not None else None
        if self.arch is None or self.machine is None:
            self._refresh_readiness()
            self._refresh_spec()
            return
        if "seq_len" in self.pinned:
            self._evaluate()  # ETA follows the dataset's tokens
        else:
            self.replan()  # seq len follows the dataset's p99

    def _schedule_recheck(self) -> None:
        if self._recheck is not None:
            self._recheck.stop()
        self._recheck = self.set_timer(RECHECK_SECONDS, self._recheck_dataset)

    def _recheck_dataset(self) -> None:
        panel = self.query_one(DatasetPanel)
        if self.report is not None and self.report_path == panel.path and not panel.checking:
            panel.check()

    # -- spec, command, readiness ----------------------------------------------------------------
    def _plan_summary(self) -> dict[str, Any]:
        c, machine = self.current, self.machine
        if c is None or machine is None or self.query_one(MachinePicker).device == "cpu":
            return {}  # like `ftui launch --device cpu`: no GPU estimate to launch with
        return plan_summary(c, machine)

    def build_spec(self) -> RunSpec | None:
        """The spec a launch would run now (None before a model and a setup exist)."""
        if self.arch is None or self.config is None:
            return None
        try:
            name, path = self.local_model()
        except FtuiError:
            name, path = (self.arch.hf_id or self.arch.name), None
        return build_spec(
            model=name,
            model_path=path,
            data=self.report_path or self.query_one(DatasetPanel).path,
            device=self.query_one(MachinePicker).device,
            config=self.config,
            epochs=self.epochs,
            summary=self._plan_summary(),
            budget=self.budget,
            options=self.options,
        )

    def _refresh_spec(self) -> None:
        arch = self.arch
        # What `ftui launch --model` takes: the directory of a local model, else its name.
        model = (arch.path if arch.source == "dir" else None) if arch else None
        self.query_one(SpecPane).show(self.build_spec(), model or "")
