"""The wizard's stage, the PEFT family's methods and the budget caps, as `ftui launch` has
them (issues 15, 16, 21): driven headless with Pilot on a fake GPU backend."""

from __future__ import annotations

from typing import Any

from textual.widgets import Select

from tests.tui.test_plan_wizard import (
    check_dataset_in,
    open_wizard,
    summary_of,
    text_of,
    tiny,  # noqa: F401  (the module's fixture)
    type_into,
    wait_until,
    wizard_app,
)
from tui.screens.plan.knobs import METHOD_CHOICES


async def test_the_stage_changes_the_estimate_and_the_command() -> None:
    app = wizard_app(model="llama-3.1-8b")
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_wizard(pilot)
        assert screen.current is not None and screen.current.config.stage == "sft"
        assert "reference:" not in summary_of(screen)
        assert "--stage sft" in text_of(screen, "#spec-cli")
        sft = screen.current

        screen.query_one("#knob-stage", Select).value = "dpo"
        await wait_until(pilot, lambda: screen.current.config.stage == "dpo")
        dpo = screen.current
        assert dpo.memory.peak_phase != sft.memory.peak_phase or (
            dpo.memory.device_bytes != sft.memory.device_bytes
        )
        summary = summary_of(screen)
        assert "reference: the base with the adapters disabled" in summary
        assert "chosen + rejected" in summary
        assert "--stage dpo" in text_of(screen, "#spec-cli")
        spec = screen.build_spec()
        assert spec is not None and spec.training.stage == "dpo"
        assert "stage: dpo" in text_of(screen, "#spec-yaml")
        # A preference stage starts from TRL's rates, as `ftui launch` does.
        assert spec.hyper.learning_rate == 5e-5

        # A knob edited under dpo keeps the stage.
        await type_into(pilot, "#knob-grad_accum", "4")
        assert screen.current.config.stage == "dpo" and screen.current.config.grad_accum == 4


async def test_every_cli_method_is_offered_and_reaches_the_command() -> None:
    assert set(METHOD_CHOICES) >= {"auto", "full", "lora", "qlora", "prefix", "prompt",
                                   "ptuning", "ia3", "bias", "freeze", "llama-adapter"}  # fmt: skip
    app = wizard_app(model="llama-3.1-8b")
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_wizard(pilot)
        screen.query_one("#knob-method", Select).value = "ia3"
        await wait_until(pilot, lambda: screen.current.config.method == "ia3")
        assert "--method ia3" in text_of(screen, "#spec-cli")
        assert "method: ia3" in text_of(screen, "#spec-yaml")
        assert not screen.query_one("#knob-error").display

        # auto still picks among full / LoRA / QLoRA.
        screen.query_one("#knob-method", Select).value = "auto"
        await wait_until(pilot, lambda: screen.current.config.method != "ia3")
        assert screen.current.config.method in ("full", "lora", "qlora")


async def test_bias_on_a_bias_free_model_shows_the_refusal(tiny: Any) -> None:  # noqa: F811
    model, _data = tiny
    app = wizard_app(model=str(model))
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_wizard(pilot)
        screen.query_one("#knob-method", Select).value = "bias"
        await wait_until(pilot, lambda: screen.query_one("#knob-error").display)
        error = text_of(screen, "#knob-error")
        assert "--method bias (BitFit) trains bias terms only: this llama model has none" in error
        assert "fix: use a model with biases" in error
        assert "trains bias terms only" in summary_of(screen)
        assert any("bias terms only" in p for p in screen.launch_problems())
        spec = screen.build_spec()
        assert spec is None or spec.training.method != "bias"

        screen.query_one("#knob-method", Select).value = "lora"
        await wait_until(pilot, lambda: screen.current is not None)
        assert screen.current.config.method == "lora"
        assert not screen.query_one("#knob-error").display


async def test_budget_caps_reach_the_spec_and_bad_ones_are_refused() -> None:
    app = wizard_app(model="llama-3.1-8b")
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_wizard(pilot)
        assert "--max-cost" not in text_of(screen, "#spec-cli")

        await type_into(pilot, "#budget-max-cost", "12.5")
        await type_into(pilot, "#budget-max-hours", "3")
        spec = screen.build_spec()
        assert spec is not None
        assert (spec.budget.max_cost, spec.budget.max_hours) == (12.5, 3.0)
        command = text_of(screen, "#spec-cli")
        assert "--max-cost 12.5" in command and "--max-hours 3" in command
        assert "max_cost: 12.5" in text_of(screen, "#spec-yaml")
        assert not screen.query_one("#budget-error").display

        await type_into(pilot, "#budget-max-hours", "0")
        error = text_of(screen, "#budget-error")
        assert "budget.max_hours (--max-hours): 0.0 is not a positive amount" in error
        assert any("--max-hours" in p for p in screen.launch_problems())
        assert "--max-hours" not in text_of(screen, "#spec-cli")

        await type_into(pilot, "#budget-max-cost", "-5")
        assert "--max-cost" in text_of(screen, "#budget-error")

        await type_into(pilot, "#budget-max-cost", "")
        await type_into(pilot, "#budget-max-hours", "")
        assert not screen.query_one("#budget-error").display
        spec = screen.build_spec()
        assert spec is not None and spec.budget.max_cost is None and spec.budget.max_hours is None


async def test_the_stage_must_match_the_dataset(tiny: Any) -> None:  # noqa: F811
    model, data = tiny
    app = wizard_app(model=str(model))
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_wizard(pilot)
        await check_dataset_in(pilot, screen, data)
        assert screen.launch_problems() == []
        screen.query_one("#knob-stage", Select).value = "dpo"
        await wait_until(pilot, lambda: screen.current.config.stage == "dpo")
        assert any("--stage dpo trains on preference pairs" in p for p in screen.launch_problems())


async def test_a_reference_pass_peak_is_named_in_the_wizard_and_the_cli(
    capsys: Any,
) -> None:
    app = wizard_app(model="llama-3.1-8b")
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_wizard(pilot)
        screen.query_one("#knob-stage", Select).value = "dpo"
        await wait_until(pilot, lambda: screen.current.config.stage == "dpo")
        screen.query_one("#knob-grad_ckpt", Select).value = "off"
        await wait_until(pilot, lambda: not screen.current.config.grad_ckpt)
        assert screen.current.memory.peak_phase == "reference_forward"
        assert "at the reference model's forward (no grad)" in summary_of(screen)

    from tui.cli.main import main

    argv = "plan --model llama-3.1-8b --stage dpo --method lora --no-grad-ckpt --batch 4"
    main([*argv.split(), "--seq-len", "1024", "--simulate", "h100"])
    out = " ".join(capsys.readouterr().out.split())  # the console may wrap the line
    assert "peak at the reference model's forward (no grad)" in out


async def test_tracker_and_preference_options_reach_the_spec_and_the_command() -> None:
    app = wizard_app(model="llama-3.1-8b")
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_wizard(pilot)
        assert not screen.query_one("#option-beta").display  # sft: no beta to set
        screen.query_one("#option-report-to", Select).value = "tensorboard"
        await wait_until(pilot, lambda: "--report-to tensorboard" in text_of(screen, "#spec-cli"))
        assert "report_to: tensorboard" in text_of(screen, "#spec-yaml")

        screen.query_one("#knob-stage", Select).value = "dpo"
        await wait_until(pilot, lambda: screen.current.config.stage == "dpo")
        assert screen.query_one("#option-beta").display
        await type_into(pilot, "#option-beta", "0.2")
        await type_into(pilot, "#option-loss-type", "ipo")
        await type_into(pilot, "#option-from-run", "sft-run")
        spec = screen.build_spec()
        assert spec is not None and spec.hyper.report_to == "tensorboard"
        assert (spec.preference.beta, spec.preference.loss_type) == (0.2, "ipo")
        assert spec.from_run == "sft-run"
        command = text_of(screen, "#spec-cli")
        assert "--beta 0.2 --loss-type ipo --from-run sft-run" in command

        # a loss of another stage is refused as the CLI refuses it, and blocks the launch
        await type_into(pilot, "#option-loss-type", "orpo")
        assert "'orpo' is not a loss of dpo" in text_of(screen, "#option-error")
        assert any("run options" in p for p in screen.launch_problems())
        assert "--loss-type" not in text_of(screen, "#spec-cli")
