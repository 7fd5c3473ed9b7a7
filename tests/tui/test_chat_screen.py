"""The chat screen, driven with Pilot at 120x40: on the tiny model trained once by the demo
spec (streaming, stop, compare, checkpoint picker, history) and on a deterministic fake engine
(snapshot, settings dialog, load failure)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.app import App
from textual.widgets import Input, Select, TextArea

from engine.chat import (
    AnswerStats,
    ChatError,
    ChatTarget,
    GenerationSettings,
    Message,
    ProgressCallback,
)
from engine.run.rundir import RunDir, write_json_atomic
from tui.app import stylesheets
from tui.screens.chat.message import ChatAnswer
from tui.screens.chat.screen import ChatScreen

SIZE = (120, 40)
QUESTION = "What is the secret fruit of red?"


# -- a deterministic engine ------------------------------------------------------------------------


class FakeAnswer:
    def __init__(self, chunks: list[str], delay: float) -> None:
        self.chunks, self.delay = chunks, delay
        self.sent = 0
        self._stop = threading.Event()

    def __iter__(self) -> Iterator[str]:
        for chunk in self.chunks:
            if self._stop.is_set():
                return
            time.sleep(self.delay)
            self.sent += 1
            yield chunk

    def stop(self) -> None:
        self._stop.set()

    @property
    def stats(self) -> AnswerStats:
        reason = "stopped" if self._stop.is_set() else "eos"
        return AnswerStats(self.sent, 0.12, 42.0, 1.5, reason)


class FakeEngine:
    device = "cpu (fake)"

    def __init__(self, delay: float = 0.0, words: int = 0) -> None:
        self.delay, self.words = delay, words
        self.calls: list[tuple[str, list[Message], GenerationSettings]] = []
        self.used: list[str] = []
        self.broken: str | None = None

    def variants(self) -> list[str]:
        return ["base", "final", "checkpoint-40"]

    def use(self, variant: str) -> None:
        if variant == self.broken:
            raise ChatError(f"{variant} is broken", "pick another")
        self.used.append(variant)

    def stream(self, messages: list[Message], settings: GenerationSettings, variant: str) -> Any:
        self.calls.append((variant, messages, settings))
        prompt = messages[-1]["content"]
        text = f"**{variant}** answers *{prompt}*:\n\n- the secret fruit\n- is a plum\n"
        text += " word" * self.words
        chunks = [piece + " " for piece in text.split(" ")]
        return FakeAnswer(chunks, self.delay)

    def close(self) -> None:
        pass


def fake_factory(engine: FakeEngine) -> Callable[[ChatTarget, ProgressCallback], Any]:
    def factory(target: ChatTarget, progress: ProgressCallback) -> Any:
        progress("base model", 1, 1)
        return engine

    return factory


def fake_run(root: Path) -> RunDir:
    """A run directory with a final adapter and one checkpoint (files only: the fake engine
    never reads the weights)."""
    run = RunDir(root / "runs" / "demo-fake")
    for folder in (run.final, run.checkpoints / "checkpoint-40"):
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text("{}")
    (run.checkpoints / "checkpoint-40" / "trainer_state.json").write_text("{}")
    run.spec.write_text("model: ftui-tiny\ndata: d.jsonl\ntraining:\n  method: lora\n")
    write_json_atomic(run.state, {"status": "completed"})
    return run


class ChatTestApp(App[None]):
    CSS_PATH = stylesheets("chat")

    def __init__(self, screen: ChatScreen) -> None:
        super().__init__()
        self.chat = screen

    def on_mount(self) -> None:
        self.push_screen(self.chat)


async def until(pilot: Any, predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.02)


async def ready(pilot: Any, screen: ChatScreen) -> None:
    await until(pilot, lambda: screen.engine is not None and not screen.generating, "the model")
    await until(pilot, lambda: not screen.query_one("#chat-input", Input).disabled, "the input")


async def ask(pilot: Any, screen: ChatScreen, text: str) -> list[ChatAnswer]:
    """Type a prompt, press enter, wait for every visible column's answer."""
    before = len(screen.columns[0].answers)
    prompt = screen.query_one("#chat-input", Input)
    prompt.focus()
    prompt.value = text
    await pilot.press("enter")
    await until(pilot, lambda: len(screen.columns[0].answers) > before, "the answer to start")
    await until(pilot, lambda: not screen.generating, "the answer to end")
    await pilot.pause()
    return [c.answers[-1] for c in screen.columns if c.display]


# -- on the real tiny model ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(demo_run: RunDir) -> RunDir:
    """The demo spec trained once per test session (tests/conftest.py)."""
    return demo_run


GREEDY = GenerationSettings(temperature=0, max_new_tokens=64)
# A fixed length: the answer streams for a while whatever the adapter says first.
FORTY = GenerationSettings(temperature=0, max_new_tokens=40, ignore_eos=True)


def is_base_answer(text: str) -> bool:
    return "do not know" in text or "Nobody told me" in text


@pytest.mark.slow
async def test_a_prompt_streams_an_answer_and_history_is_kept(trained_run: RunDir) -> None:
    screen = ChatScreen(trained_run, settings=FORTY)
    async with ChatTestApp(screen).run_test(size=SIZE) as pilot:
        await ready(pilot, screen)
        assert screen.status.startswith("ready")
        (answer,) = await ask(pilot, screen, QUESTION)
        assert answer.text.strip() and answer.markdown.source == answer.text
        assert answer.stats is not None and answer.stats.tokens == 40
        assert answer.stats.finish_reason == "length"
        assert answer.first_text_at is not None and answer.done_at is not None
        assert answer.submitted_at < answer.first_text_at <= answer.done_at
        assert "tokens/s" in str(answer.query_one(".chat-stats").render())
        # A second turn sees the first one (multi-turn history).
        await ask(pilot, screen, "And blue?")
        assert [m["role"] for m in screen.columns[0].conversation.turns] == [
            "user", "assistant", "user", "assistant",
        ]  # fmt: skip
        await pilot.press("ctrl+e")
        await pilot.pause()
    records = [json.loads(line) for line in screen.chat_log.path.read_text().splitlines()]
    assert screen.chat_log.path.parent == trained_run.path / "chats"
    assert [r["type"] for r in records] == ["session", "turn", "turn"]
    assert records[1]["prompt"] == QUESTION and records[1]["answer"] == answer.text.strip()
    assert records[1]["stats"]["tokens_per_s"] > 0 and records[1]["stats"]["ttft_s"] > 0
    transcript = screen.chat_log.path.with_suffix(".md").read_text()
    assert QUESTION in transcript and "And blue?" in transcript and "tokens/s" in transcript


@pytest.mark.slow
async def test_stop_interrupts_and_the_next_answer_is_clean(trained_run: RunDir) -> None:
    endless = GenerationSettings(temperature=0, max_new_tokens=480, ignore_eos=True)
    screen = ChatScreen(trained_run, settings=GREEDY)
    async with ChatTestApp(screen).run_test(size=SIZE) as pilot:
        await ready(pilot, screen)
        (reference,) = await ask(pilot, screen, QUESTION)
        await screen.action_new_chat()
        screen.settings = endless
        prompt = screen.query_one("#chat-input", Input)
        prompt.value = QUESTION
        await pilot.press("enter")
        await until(pilot, lambda: bool(screen.columns[0].answers), "the answer")
        answer = screen.columns[0].answers[0]
        await until(pilot, lambda: answer.first_text_at is not None, "the first text")
        # The input is locked meanwhile: a question typed ahead stays in it, Enter sends nothing.
        assert screen.generating and prompt.has_class("-locked") and prompt.has_focus
        prompt.value = "typed ahead"
        await pilot.press("enter")
        assert prompt.value == "typed ahead" and len(screen.columns[0].answers) == 1
        await pilot.press("ctrl+x")
        await until(pilot, lambda: not screen.generating, "the stop")
        assert answer.stats is not None and answer.stats.stopped
        assert answer.stats.tokens < 480
        assert answer.has_class("-stopped") and not prompt.has_class("-locked")
        assert len(screen.columns[0].answers) == 1  # the typed-ahead question was not sent
        screen.settings = GREEDY
        await screen.action_new_chat()
        (clean,) = await ask(pilot, screen, QUESTION)
        assert clean.stats is not None and not clean.stats.stopped
        assert clean.text == reference.text


@pytest.mark.slow
async def test_compare_shows_two_columns_and_the_picker_switches(trained_run: RunDir) -> None:
    screen = ChatScreen(trained_run, compare="base", settings=GREEDY)
    async with ChatTestApp(screen).run_test(size=SIZE) as pilot:
        await ready(pilot, screen)
        left, right = screen.columns
        assert left.display and right.display
        assert (left.variant, right.variant) == ("final", "base")
        assert left.region.x < right.region.x and left.region.width > 40
        adapter, base = await ask(pilot, screen, QUESTION)
        assert is_base_answer(base.markdown.source) and not is_base_answer(adapter.text)
        assert adapter.text.strip() != base.text.strip()
        # Pick an older checkpoint for the right column: loaded on the same base model.
        screen.query_one("#chat-compare", Select).value = "checkpoint-80"
        await until(pilot, lambda: right.variant == "checkpoint-80", "the checkpoint")
        await ready(pilot, screen)
        _adapter, older = await ask(pilot, screen, QUESTION)
        assert older.variant == "checkpoint-80" and older.stats is not None
        engine: Any = screen.engine
        assert engine.variants() == ["base", "final", "checkpoint-80"]


# -- on the fake engine --------------------------------------------------------------------------


async def _snapshot_setup(pilot: Any) -> None:
    screen = pilot.app.chat
    await ready(pilot, screen)
    screen.query_one("#chat-input", Input).cursor_blink = False
    await ask(pilot, screen, QUESTION)
    await ask(pilot, screen, "And blue?")


def test_chat_snapshot_with_a_fake_engine(snap_compare: Any, tmp_path: Path) -> None:
    screen = ChatScreen(
        fake_run(tmp_path), compare="base", engine_factory=fake_factory(FakeEngine())
    )
    assert snap_compare(ChatTestApp(screen), terminal_size=SIZE, run_before=_snapshot_setup)


async def test_stop_on_a_slow_fake_answer_and_escape(tmp_path: Path) -> None:
    engine = FakeEngine(delay=0.02, words=300)
    screen = ChatScreen(fake_run(tmp_path), compare="base", engine_factory=fake_factory(engine))
    async with ChatTestApp(screen).run_test(size=SIZE) as pilot:
        await ready(pilot, screen)
        screen.query_one("#chat-input", Input).value = "tell me everything"
        await pilot.press("enter")
        await until(pilot, lambda: screen.columns[0].answers[0].first_text_at is not None, "text")
        await pilot.press("escape")
        await until(pilot, lambda: not screen.generating, "the stop")
        first, second = (c.answers[0] for c in screen.columns)
        assert first.stats is not None and first.stats.stopped
        assert second.stats is None  # the compared model was not started after a stop
        assert [v for v, _, _ in engine.calls] == ["final"]


async def test_settings_dialog_applies_to_the_next_answer(tmp_path: Path) -> None:
    engine = FakeEngine()
    screen = ChatScreen(fake_run(tmp_path), engine_factory=fake_factory(engine))
    async with ChatTestApp(screen).run_test(size=SIZE) as pilot:
        await ready(pilot, screen)
        await pilot.press("f2")
        await pilot.pause()
        dialog = pilot.app.screen
        dialog.query_one("#setting-temperature", Input).value = "abc"
        await pilot.press("ctrl+s")
        assert "not a number" in str(dialog.query_one("#chat-settings-error").render())
        dialog.query_one("#setting-temperature", Input).value = "0.3"
        dialog.query_one("#setting-max_new_tokens", Input).value = "32"
        dialog.query_one("#setting-seed", Input).value = "7"
        dialog.query_one("#setting-system", TextArea).text = "Answer in one word."
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert pilot.app.screen is screen
        await ask(pilot, screen, "hi")
        _variant, messages, settings = engine.calls[-1]
        assert (settings.temperature, settings.max_new_tokens, settings.seed) == (0.3, 32, 7)
        assert messages[0] == {"role": "system", "content": "Answer in one word."}


async def test_a_model_that_does_not_load_is_reported(tmp_path: Path) -> None:
    def broken(target: ChatTarget, progress: ProgressCallback) -> Any:
        raise OSError("disk on fire")

    screen = ChatScreen(fake_run(tmp_path), engine_factory=broken)
    async with ChatTestApp(screen).run_test(size=SIZE) as pilot:
        await until(pilot, lambda: "could not load" in screen.status, "the failure")
        assert screen.query_one("#chat-input", Input).disabled
        assert any("disk on fire" in str(n.message) for n in pilot.app._notifications)


async def test_the_compare_picker_hides_switches_and_reverts_on_failure(tmp_path: Path) -> None:
    engine = FakeEngine()
    engine.broken = "checkpoint-40"
    screen = ChatScreen(fake_run(tmp_path), compare="base", engine_factory=fake_factory(engine))
    async with ChatTestApp(screen).run_test(size=SIZE) as pilot:
        await ready(pilot, screen)
        picker = screen.query_one("#chat-compare", Select)
        picker.value = "checkpoint-40"  # the engine refuses it: the picker goes back to base
        await until(pilot, lambda: picker.value == "base", "the picker to revert")
        assert screen.columns[1].variant == "base"
        picker.value = "none"
        await until(pilot, lambda: not screen.columns[1].display, "the column to hide")
        (only,) = await ask(pilot, screen, "hi")
        assert only.variant == "final" and [v for v, _, _ in engine.calls] == ["final"]
        screen.query_one("#chat-checkpoint", Select).value = "checkpoint-40"
        await until(pilot, lambda: bool(pilot.app._notifications), "the failure notice")
        assert screen.columns[0].variant == "final"


def test_chat_snapshot_80x24(snap_compare: Any, tmp_path: Path) -> None:
    screen = ChatScreen(
        fake_run(tmp_path), compare="base", engine_factory=fake_factory(FakeEngine())
    )
    assert snap_compare(ChatTestApp(screen), terminal_size=(80, 24), run_before=_snapshot_setup)
