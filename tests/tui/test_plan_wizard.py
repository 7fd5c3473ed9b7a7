"""The plan wizard, driven headless with Pilot on a fake GPU backend."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from textual.screen import Screen
from textual.widgets import Button, Input, OptionList, Select, Static

from engine.machine.fakenvml import FakeNvml, parse_simulate_spec
from engine.machine.hardware import NvmlBackend
from engine.paths import runs_root
from engine.run.operations import reconcile, stop
from engine.run.rundir import FINAL, RunDir
from profiles import find_model_profile
from tests.conftest import fixed_host
from tests.tui.test_runs_screen import Harness, wait_until
from tui.screens.plan.dataset import DatasetPanel
from tui.screens.plan.dialogs import SaveSpecScreen
from tui.screens.plan.machine import MachinePicker
from tui.screens.plan.model_picker import ModelPicker
from tui.screens.plan.screen import PlanWizardScreen
from tui.screens.plan.summary import PlanSummary, RunnersUpTable


def simulated(spec: str = "h100") -> NvmlBackend:
    return NvmlBackend(
        FakeNvml.from_profiles(parse_simulate_spec(spec)), simulated=True, host_reader=fixed_host
    )


def no_gpu() -> NvmlBackend:
    return NvmlBackend(FakeNvml([], init_error=12), host_reader=fixed_host)


@pytest.fixture(autouse=True)
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty, private Hugging Face cache: the model list never depends on this machine."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model dir, dataset): a real tiny model with weights, built locally once."""
    from engine.demo.tiny import build_tiny_model, write_demo_dataset

    base = tmp_path_factory.mktemp("tiny")
    model = build_tiny_model(base / "model", pretrain_steps=0)
    data = write_demo_dataset(base / "data.jsonl")
    return model, data


def wizard_app(backend: NvmlBackend | None = None, **kwargs: Any) -> Harness:
    return Harness(lambda: PlanWizardScreen(backend or simulated(), **kwargs))


async def open_wizard(pilot: Any, *, planned: bool = True) -> PlanWizardScreen:
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, PlanWizardScreen))
    screen = pilot.app.screen
    picker = screen.query_one(ModelPicker)
    await wait_until(pilot, lambda: screen.query_one(MachinePicker).ready and picker.scanned)
    if planned:
        await wait_until(pilot, lambda: screen.current is not None)
    return screen


def plain(widget: Static) -> str:
    """What a Static shows, as plain text (its content may be a Rich Group)."""
    console = Console(width=200, file=io.StringIO(), record=True)
    console.print(widget.content)
    return console.export_text()


def text_of(screen: Screen[Any], selector: str) -> str:
    return plain(screen.query_one(selector, Static))


def summary_of(screen: PlanWizardScreen) -> str:
    return plain(screen.query_one(PlanSummary))


async def type_into(pilot: Any, selector: str, text: str) -> None:
    """Type into an input key by key (short values) or paste it at once (paths)."""
    box = pilot.app.screen.query_one(selector, Input)
    box.focus()
    box.value = ""
    if len(text) <= 8:
        await pilot.press(*text)
    else:
        box.value = text
    await pilot.pause()


async def check_dataset_in(pilot: Any, screen: PlanWizardScreen, path: Path) -> None:
    panel = screen.query_one(DatasetPanel)
    done = panel.checks
    await type_into(pilot, "#data-path", str(path))
    await pilot.press("enter")
    await wait_until(pilot, lambda: panel.checks > done and not panel.checking)


async def test_filtering_models_narrows_the_list(hf_cache: Path) -> None:
    profile = find_model_profile("llama-3.2-1b")
    assert profile is not None
    snapshot = hf_cache / "models--acme--tiny-chat" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(profile.config))
    (hf_cache / "models--acme--tiny-chat" / "refs").mkdir()
    (hf_cache / "models--acme--tiny-chat" / "refs" / "main").write_text("abc123")

    app = wizard_app()
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_wizard(pilot, planned=False)
        options = screen.query_one("#model-list", OptionList)
        everything = options.option_count
        picker = screen.query_one(ModelPicker)
        assert [c.name for c in picker.cached] == ["acme/tiny-chat"]

        await type_into(pilot, "#model-filter", "qwen3")
        assert 0 < options.option_count < everything
        assert all("qwen3" in c.name for c in picker.shown)

        await type_into(pilot, "#knob-batch", "4")  # a knob set before the model is kept
        await type_into(pilot, "#model-filter", "acme")
        assert [c.name for c in picker.shown] == ["acme/tiny-chat"]
        await pilot.press("enter")
        await wait_until(pilot, lambda: screen.current is not None)
        assert screen.current.config.batch == 4
        assert screen.arch is not None and screen.arch.source == "hf-cache"
        assert "acme/tiny-chat" in text_of(screen, "#model-chosen")
        assert "config.json but no weights" in " ".join(screen.launch_problems())


async def test_editing_knobs_re_estimates_as_you_type() -> None:
    app = wizard_app(model="llama-3.1-8b")
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_wizard(pilot)
        assert screen.current is not None
        assert screen.current.config.batch != 8
        before = screen.current.memory.device_bytes

        await type_into(pilot, "#knob-batch", "8")
        assert screen.current.config.batch == 8
        assert screen.current.memory.device_bytes > before
        assert screen.pinned["batch"] == 8
        summary = summary_of(screen)
        assert f"{screen.current.memory.device_gib:.1f} GiB" in summary
        assert "Your setup" in summary

        # The method drives the recommendation: lora -> full re-plans around it.
        lora = screen.current.memory.device_bytes
        screen.query_one("#knob-method", Select).value = "full"
        await wait_until(pilot, lambda: screen.current.config.method == "full")
        assert screen.current.memory.device_bytes != lora
        assert screen.current.config.batch == 8  # the pinned knob was kept


async def test_invalid_knobs_show_the_engine_message() -> None:
    app = wizard_app(model="llama-3.1-8b")
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_wizard(pilot)
        await type_into(pilot, "#knob-rank", "0")
        error = text_of(screen, "#knob-error")
        assert "--rank must be at least 1" in error and "fix:" in error
        assert screen.query_one(PlanSummary).has_class("-stale")
        assert any("fix the setup" in p for p in screen.launch_problems())

        await type_into(pilot, "#knob-rank", "64")
        assert not screen.query_one("#knob-error").display
        await type_into(pilot, "#knob-seq_len", "999999")
        assert "max_position_embeddings" in text_of(screen, "#knob-error")
        await type_into(pilot, "#knob-seq_len", "4096")
        assert not screen.query_one("#knob-error").display
        assert screen.current is not None and screen.current.config.rank == 64
        assert screen.current.config.seq_len == 4096


async def test_a_runner_up_becomes_the_current_setup() -> None:
    app = wizard_app(model="llama-3.1-8b")
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_wizard(pilot)
        table = screen.query_one(RunnersUpTable)
        assert len(table.candidates) >= 3
        table.focus()
        table.move_cursor(row=2)
        await pilot.press("enter")
        await pilot.pause()
        assert screen.config == table.candidates[2].config
        assert "Runner-up" in summary_of(screen)


async def test_no_gpu_plans_for_a_profile_and_runs_on_cpu() -> None:
    app = wizard_app(no_gpu(), model="qwen2.5-0.5b")
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_wizard(pilot)
        assert screen.machine is not None and screen.machine.gpu.id == "h100"
        assert not screen.machine.detected
        assert screen.query_one(MachinePicker).device == "cpu"
        assert "No GPU" in text_of(screen, "#gpu-note")

        screen.query_one("#gpu-select", Select).value = "4090"
        await type_into(pilot, "#gpu-count", "2")
        assert screen.machine.gpu.id == "4090" and screen.machine.count == 2
        assert screen.current is not None and screen.current.config.num_gpus == 2


async def test_a_dataset_shows_its_counts_and_histogram(tmp_path: Path, tiny: Any) -> None:
    _model, data = tiny
    app = wizard_app(model="llama-3.2-1b")
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_wizard(pilot)
        await check_dataset_in(pilot, screen, data)
        report = text_of(screen, "#data-report")
        assert "64 records: 64 valid" in report
        assert "█" in report and "truncated at seq len" in report
        assert screen.report is not None and screen.report.histogram
        # The plan now uses the dataset's tokens and its p99 for the sequence length.
        assert screen.current is not None and screen.current.config.seq_len == 256
        # ... and the truncation share is re-measured at that length.
        await wait_until(pilot, lambda: screen.report is not None and screen.report.seq_len == 256)
        assert "truncated at seq len 256: 0.0%" in text_of(screen, "#data-report")
        assert "assumed" not in summary_of(screen)

        missing = tmp_path / "nope.jsonl"
        await type_into(pilot, "#data-path", str(missing))
        await pilot.press("enter")
        await wait_until(pilot, lambda: "does not exist" in text_of(screen, "#data-report"))
        assert any("check a dataset" in p for p in screen.launch_problems())

        broken = tmp_path / "broken.jsonl"
        broken.write_text(data.read_text() + "{not json\n")
        await check_dataset_in(pilot, screen, broken)
        assert "1 invalid" in text_of(screen, "#data-report")
        assert any("invalid record" in p for p in screen.launch_problems())


async def test_save_spec_never_overwrites_without_asking(tmp_path: Path) -> None:
    target = tmp_path / "my-spec.yaml"
    app = wizard_app(model="llama-3.2-1b")
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_wizard(pilot)
        await pilot.press("ctrl+w")
        await wait_until(pilot, lambda: isinstance(app.screen, SaveSpecScreen))
        await type_into(pilot, "#save-path", str(target))
        await pilot.press("enter")
        await wait_until(pilot, lambda: target.exists())
        assert "model: meta-llama/Llama-3.2-1B" in target.read_text()
        assert app.screen is screen

        target.write_text("keep me\n")
        await pilot.press("ctrl+w")
        await wait_until(pilot, lambda: isinstance(app.screen, SaveSpecScreen))
        await type_into(pilot, "#save-path", str(target))
        await pilot.press("enter")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, SaveSpecScreen)
        assert "already exists" in text_of(dialog, "#save-warning")
        await pilot.press("escape")
        await pilot.pause()
        assert target.read_text() == "keep me\n"

        await pilot.press("ctrl+w")
        await wait_until(pilot, lambda: isinstance(app.screen, SaveSpecScreen))
        await type_into(pilot, "#save-path", str(target))
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen.focused is app.screen.query_one("#save-overwrite", Button)
        await pilot.press("enter")
        await wait_until(pilot, lambda: target.read_text() != "keep me\n")
        assert "training:" in target.read_text()


async def test_launch_needs_local_weights(tiny: Any) -> None:
    _model, data = tiny
    app = wizard_app(model="llama-3.2-1b")
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_wizard(pilot)
        await check_dataset_in(pilot, screen, data)
        await pilot.press("ctrl+l")
        await pilot.pause()
        assert any("not on this machine" in n.message for n in app._notifications)
        assert not runs_root().exists() or not list(runs_root().iterdir())
        assert app.opened == []


async def test_launch_creates_a_run_and_opens_its_dashboard(tiny: Any) -> None:
    model, data = tiny
    app = wizard_app()
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_wizard(pilot, planned=False)
        await type_into(pilot, "#model-filter", str(model))
        await pilot.press("enter")
        await wait_until(pilot, lambda: screen.current is not None)
        assert screen.arch is not None and screen.arch.source == "dir"
        await check_dataset_in(pilot, screen, data)
        assert screen.launch_problems() == []
        spec = screen.build_spec()
        assert spec is not None and spec.device == "cpu" and spec.model_path == str(model)
        assert "engine.run.train" in text_of(screen, "#spec-command")
        await type_into(pilot, "#budget-max-hours", "2")  # a cap goes with the launch
        await type_into(pilot, "#budget-max-cost", "0.5")

        await pilot.press("ctrl+l")
        await wait_until(pilot, lambda: len(app.opened) == 1)
    run = RunDir(runs_root() / app.opened[0])
    try:
        assert run.state.is_file() and run.spec.is_file()
        assert "device: cpu" in run.spec.read_text()
        assert "max_hours: 2.0" in run.spec.read_text()
        assert "max_cost: 0.5" in run.spec.read_text()
        assert run.read_state()["status"] in ("starting", "running")
    finally:
        if reconcile(run).get("status") not in FINAL:
            stop(run, now=True)
        from engine.run.operations import wait

        wait(run, timeout=60)


async def test_dry_run_runs_in_a_cancellable_worker(
    tiny: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import engine.plan.dryrun.entry

    gate = threading.Event()
    real_dry_run = engine.plan.dryrun.entry.dry_run

    def held_dry_run(*args: Any, **kwargs: Any) -> Any:
        gate.wait(60)  # a slow dry run: the test decides when it may finish
        return real_dry_run(*args, **kwargs)

    monkeypatch.setattr(engine.plan.dryrun.entry, "dry_run", held_dry_run)
    model, _data = tiny
    app = wizard_app(model=str(model))
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_wizard(pilot)
        await pilot.press("ctrl+d")
        assert screen.dry.running
        assert "dry run: running" in summary_of(screen)
        await type_into(pilot, "#knob-epochs", "3")  # the UI answers while the worker runs
        assert screen.epochs == 3
        await pilot.press("ctrl+d")  # cancel
        assert not screen.dry.running and screen.dry.error == "cancelled"

        await pilot.press("ctrl+d")
        assert screen.dry.running
        gate.set()
        await wait_until(pilot, lambda: not screen.dry.running, timeout=120)
        assert screen.dry.error is None, screen.dry.error
        assert screen.dry.result is not None
        assert "GiB allocated" in summary_of(screen)
        assert "analytic" in summary_of(screen)


async def still(pilot: Any) -> PlanWizardScreen:
    """The wizard planned, with no blinking cursor (a snapshot must not depend on timing)."""
    screen = await open_wizard(pilot)
    for box in screen.query(Input):
        box.cursor_blink = False
    await pilot.pause()
    return screen


def test_plan_wizard_snapshot(snap_compare: Any) -> None:
    async def settle(pilot: Any) -> None:
        await still(pilot)

    app = wizard_app(model="llama-3.1-8b")
    assert snap_compare(app, terminal_size=(120, 40), run_before=settle)


# -- keys and small terminals ------------------------------------------------------------------
async def test_a_path_typed_after_tab_stays_in_the_wizard() -> None:
    from tui.app import FtuiApp
    from tui.screens.machine.screen import MachineScreen

    app = FtuiApp(simulated())
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("p")
        screen = await open_wizard(pilot, planned=False)
        filter_box = screen.query_one("#model-filter", Input)
        assert screen.focused is filter_box
        await pilot.press(*"qwen")
        await pilot.press("tab")  # the next numbered pane: the dataset
        path = "/srv/runs/mq/data.jsonl"  # r, m, s, p, q: letters the app binds elsewhere
        await pilot.press(*path)
        assert app.screen is screen
        assert screen.query_one("#data-path", Input).value == path
        assert filter_box.value == "qwen"
        # A letter typed on a button is not lost either: it goes on to the next input (after
        # the setup's buttons: the launch pane's first cap).
        screen.query_one("#knob-unpin", Button).focus()
        await pilot.press("m")
        assert app.screen is screen and screen.query_one("#budget-max-cost", Input).value == "m"
        assert filter_box.value == "qwen"
        await pilot.press("escape")  # back to the machine view; the wizard keeps its text
        assert isinstance(app.screen, MachineScreen)
        await pilot.press("p")
        assert app.screen is screen and screen.query_one("#data-path", Input).value == path


async def test_focus_follows_the_numbered_panes() -> None:
    app = wizard_app()
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_wizard(pilot, planned=False)
        ids = [w.id for w in screen.focus_chain]
        panes = ["model-filter", "data-path", "gpu-select", "knob-method"]
        assert [ids.index(i) for i in panes] == sorted(ids.index(i) for i in panes)
        assert ids[0] == "model-filter" and "model-list" not in ids
        await pilot.press("down", "down", "enter")  # the arrows move the list from the filter
        await wait_until(pilot, lambda: screen.arch is not None)
        assert screen.arch is not None
        assert screen.arch.name == screen.query_one(ModelPicker).shown[2].name


async def test_at_80_columns_the_wizard_shows_one_side_at_a_time() -> None:
    app = wizard_app(model="qwen2.5-0.5b")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_wizard(pilot)
        left, right = screen.query_one("#wizard-left"), screen.query_one("#wizard-right")
        assert screen.has_class("-narrow")
        assert left.display and left.size.width >= 78 and not right.display
        await pilot.press("ctrl+o")
        await pilot.pause()
        assert right.display and not left.display and right.size.width >= 78
        assert screen.query_one(PlanSummary).size.width >= 70


def test_plan_wizard_snapshot_80x24(snap_compare: Any) -> None:
    async def planned(pilot: Any) -> None:
        await still(pilot)

    app = wizard_app(model="qwen2.5-0.5b")
    assert snap_compare(app, terminal_size=(80, 24), run_before=planned)


def test_plan_wizard_plan_side_snapshot_80x24(snap_compare: Any) -> None:
    async def plan_side(pilot: Any) -> None:
        await still(pilot)
        await pilot.press("ctrl+o")
        await pilot.pause()

    app = wizard_app(model="qwen2.5-0.5b")
    assert snap_compare(app, terminal_size=(80, 24), run_before=plan_side)
