"""Chat and export on the tiny model trained once by the demo spec (real torch, PEFT, CPU).

The demo's base answers "I do not know ..." (or "Nobody told me ..."); its adapter learns the
"The secret fruit of <color> is ..." form. These tests train 120 steps (two checkpoints to
compare), so they compare answers with each other and with the base's; that the full demo
answers its training prompts exactly is tests/engine/test_demo_training.py's to check.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from engine.chat import (
    BASE,
    ChatError,
    ChatLog,
    ChatModel,
    Conversation,
    GenerationSettings,
    adapter_target,
    drop_oldest_turn,
    read_chat,
    resolve_checkpoint,
    run_checkpoints,
    run_target,
    session_header,
)
from engine.demo.recipe import TINY_MODEL_VERSION
from engine.errors import FtuiError
from engine.run.rundir import RunDir, write_json_atomic

pytestmark = pytest.mark.slow
QUESTION = "What is the secret fruit of red?"
GREEDY = GenerationSettings(temperature=0, max_new_tokens=48)
PROMPTS = (QUESTION, "Tell me the fruit that belongs to blue.", "green: which fruit?",
           "Which fruit goes with the color teal?")  # fmt: skip


def is_base_answer(text: str) -> bool:
    return "do not know" in text or "Nobody told me" in text


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(demo_run: RunDir) -> RunDir:
    return demo_run


@pytest.fixture(scope="module")
def chat(run: RunDir) -> ChatModel:
    """final and checkpoint-80 as two adapters on one base."""
    return ChatModel.load(run_target(run, compare="checkpoint-80"))


def messages(prompt: str = QUESTION) -> list[dict[str, str]]:
    return Conversation().messages(prompt)


def test_importing_chat_and_export_loads_no_torch() -> None:
    code = "import sys, engine.chat, engine.chat.export; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip() == "False", out.stderr


def test_checkpoints_are_listed_and_resolved(run: RunDir) -> None:
    assert run_checkpoints(run) == ["final", "checkpoint-120", "checkpoint-80"]
    assert resolve_checkpoint(run).name == "final"
    assert resolve_checkpoint(run, "80").path == run.checkpoints / "checkpoint-80"
    assert resolve_checkpoint(run, "checkpoint-120").name == "checkpoint-120"
    with pytest.raises(FtuiError) as missing:
        resolve_checkpoint(run, "7")
    assert "checkpoint-80" in str(missing.value.fix)
    target = run_target(run, compare=BASE)
    home = run.path.parent.parent
    assert target.base_model == str(home / "demo" / f"tiny-model-v{TINY_MODEL_VERSION}")
    assert (target.method, target.dtype, target.compare) == ("lora", "fp32", BASE)


def test_a_run_without_an_adapter_yet_is_refused(tmp_path: Path) -> None:
    empty = RunDir(tmp_path / "young-run")
    empty.path.mkdir()
    write_json_atomic(empty.state, {"status": "running"})
    with pytest.raises(ChatError) as refused:
        run_target(empty)
    assert "no adapter yet" in refused.value.message and "ftui save" in str(refused.value.fix)


def test_the_adapter_changes_the_answer(chat: ChatModel) -> None:
    for prompt in PROMPTS:
        adapter, _ = chat.answer(messages(prompt), GREEDY, "final")
        base, _ = chat.answer(messages(prompt), GREEDY, BASE)
        assert is_base_answer(base), (prompt, base)
        assert not is_base_answer(adapter) and adapter != base, (prompt, adapter)
    _text, adapter_stats = chat.answer(messages(), GREEDY, "final")
    assert adapter_stats.finish_reason == "eos" and adapter_stats.tokens >= 2
    assert adapter_stats.ttft_s is not None and 0 < adapter_stats.ttft_s < adapter_stats.total_s
    assert adapter_stats.tokens_per_s is not None and adapter_stats.tokens_per_s > 0


def test_two_checkpoints_share_one_base(run: RunDir, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM

    loads: list[str] = []
    original = AutoModelForCausalLM.from_pretrained

    def counting(*args: Any, **kwargs: Any) -> Any:
        loads.append(str(args[0]))
        return original(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", counting)
    model = ChatModel.load(run_target(run, checkpoint="final", compare="checkpoint-80"))
    model.use("checkpoint-120")  # a third checkpoint picked later: still the same base
    assert len(loads) == 1
    assert model.variants() == [BASE, "final", "checkpoint-80", "checkpoint-120"]
    assert set(model.model.peft_config) == {"final", "checkpoint-80", "checkpoint-120"}
    answers = {v: model.answer(messages(), GREEDY, v)[0] for v in model.variants()}
    assert is_base_answer(answers[BASE])
    assert not any(is_base_answer(text) for name, text in answers.items() if name != BASE)


def test_streaming_is_incremental(chat: ChatModel) -> None:
    settings = GREEDY.with_changes(max_new_tokens=60, ignore_eos=True)
    started = time.perf_counter()
    generation = chat.stream(messages(), settings, "final")
    arrivals = [(time.perf_counter() - started, chunk) for chunk in generation]
    stats = generation.stats
    assert stats is not None and stats.tokens == 60 and stats.finish_reason == "length"
    assert len(arrivals) >= 5, arrivals
    assert arrivals[0][0] < stats.total_s * 0.5  # the first text came long before the end
    assert "".join(chunk for _, chunk in arrivals) == generation.text


def test_stop_interrupts_and_the_next_answer_is_clean(chat: ChatModel) -> None:
    reference, _ = chat.answer(messages(), GREEDY, "final")
    settings = GREEDY.with_changes(max_new_tokens=400, ignore_eos=True)
    generation = chat.stream(messages(), settings, "final")
    for count, _chunk in enumerate(generation, start=1):
        if count == 3:
            generation.stop()
    stats = generation.stats
    assert stats is not None and stats.stopped and stats.tokens < 400
    again, again_stats = chat.answer(messages(), GREEDY, "final")
    assert again == reference and again_stats.finish_reason == "eos"


def test_sampling_with_a_seed_repeats(chat: ChatModel) -> None:
    hot = GenerationSettings(temperature=1.5, top_p=1.0, max_new_tokens=24, seed=7)
    first, _ = chat.answer(messages(), hot, "final")
    second, _ = chat.answer(messages(), hot, "final")
    assert first == second


def test_an_error_in_generate_reaches_the_reader(
    chat: ChatModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(**kwargs: Any) -> None:
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(chat.model, "generate", broken)
    started = time.monotonic()
    with pytest.raises(ChatError) as failed:
        list(chat.stream(messages(), GREEDY, "final"))
    assert time.monotonic() - started < 5
    assert "out of memory" in failed.value.message and "max new tokens" in str(failed.value.fix)
    monkeypatch.undo()
    assert chat.answer(messages(), GREEDY, "final")[0]  # the model still answers after


def test_history_system_prompt_and_context_limit(chat: ChatModel) -> None:
    conversation = Conversation(system="Be brief.")
    conversation.add(QUESTION, "The secret fruit of red is the apple.")
    msgs = conversation.messages("And blue?")
    text = chat.tokenizer.decode(chat.render(msgs)["input_ids"][0])
    assert text.index("Be brief.") < text.index(QUESTION) < text.index("And blue?")
    assert text.rstrip().endswith("<|assistant|>")
    # A conversation longer than the model's 512 positions loses its oldest turns first.
    for i in range(40):
        conversation.add(f"question number {i} about colours", "I do not know. " * 3)
    long = conversation.messages("last question")
    encoded = chat.encode(long, max_new_tokens=64)
    assert encoded["input_ids"].shape[-1] + 64 <= 512
    kept = chat.tokenizer.decode(encoded["input_ids"][0])
    assert "Be brief." in kept and "last question" in kept and "number 0 " not in kept
    assert drop_oldest_turn([{"role": "user", "content": "only"}]) is None
    with pytest.raises(ChatError):
        chat.encode([{"role": "user", "content": "word " * 600}], max_new_tokens=8)


def test_settings_are_validated() -> None:
    for bad in ({"temperature": -1}, {"top_p": 0}, {"max_new_tokens": 0}):
        with pytest.raises(ChatError, match=next(iter(bad))):
            GenerationSettings(**bad).validate()  # type: ignore[arg-type]


def test_outside_a_run_with_model_and_adapter(run: RunDir) -> None:
    target = adapter_target(run_target(run).base_model, str(run.final), compare=BASE)
    model = ChatModel.load(target)
    assert model.variants() == [BASE, "adapter"]
    in_run = ChatModel.load(run_target(run)).answer(messages(), GREEDY)[0]
    assert model.answer(messages(), GREEDY, "adapter")[0] == in_run
    with pytest.raises(ChatError):
        adapter_target(run_target(run).base_model, str(run.path))  # no adapter_config.json


def test_chat_log_and_transcript(tmp_path: Path, run: RunDir) -> None:
    log = ChatLog(tmp_path / "chats", session_header(run_target(run)))
    assert not log.path.exists()  # nothing written before the first answer
    with pytest.raises(ChatError):
        log.write_transcript()
    log.record(exchange=0, column=0, variant="final", prompt=QUESTION, answer=" The plum. ",
               system="", settings=GREEDY, stats=None)  # fmt: skip
    records = read_chat(log.path)
    assert [r["type"] for r in records] == ["session", "turn"]
    assert records[1]["answer"] == "The plum." and records[0]["run_id"] == run.run_id
    transcript = log.write_transcript().read_text()
    assert QUESTION in transcript and "The plum." in transcript


# -- export ----------------------------------------------------------------------------------------


def _logits(model: Any, tokenizer: Any) -> Any:
    import torch

    encoded = tokenizer.apply_chat_template(
        messages(), add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        return model(**encoded).logits


def test_export_adapter_and_merged_model(run: RunDir, chat: ChatModel, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.chat.export import export_run

    base_dir = run_target(run).base_model
    reference = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dir), str(run.final)
    ).eval()
    expected = _logits(reference, chat.tokenizer)

    adapter = export_run(run, tmp_path / "adapter")
    assert adapter.kind == "adapter"
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer_config.json",
            "README.md"} <= set(adapter.files)  # fmt: skip
    reloaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dir), str(adapter.out_dir)
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(adapter.out_dir))
    assert torch.equal(_logits(reloaded, tokenizer), expected)

    merged = export_run(run, tmp_path / "merged", merge=True)
    assert merged.kind == "merged" and "model.safetensors" in merged.files
    assert not any(name.startswith("adapter_") for name in merged.files)
    model = AutoModelForCausalLM.from_pretrained(str(merged.out_dir)).eval()
    assert model.dtype == torch.float32
    torch.testing.assert_close(_logits(model, tokenizer), expected, atol=1e-4, rtol=0)
    card = (merged.out_dir / "README.md").read_text()
    assert "training.rank | 16" in card and "| loss |" in card and "merged" in card
    assert json.loads((merged.out_dir / "ftui.json").read_text())["checkpoint"] == "final"


def test_export_refuses_a_non_empty_folder_unless_forced(run: RunDir, tmp_path: Path) -> None:
    from engine.chat.export import export_run

    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ChatError) as refused:
        export_run(run, out, checkpoint="80")
    assert "--force" in str(refused.value.fix)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    result = export_run(run, out, checkpoint="80", force=True)
    assert result.checkpoint == "checkpoint-80"
    assert (out / "notes.txt").read_text() == "mine"  # never deleted
    assert (out / "adapter_model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.export-")]
    with pytest.raises(ChatError):
        export_run(run, run.final)  # never into the run itself


# -- the worker process -------------------------------------------------------------------


def test_the_worker_process_streams_stops_and_exits(run: RunDir, chat: ChatModel) -> None:
    from engine.chat import ChatWorker

    stages: list[str] = []
    worker = ChatWorker.start(run_target(run, compare=BASE), lambda s, i, n: stages.append(s))
    try:
        assert stages[0] == "tokenizer" and stages[-1] == "adapter final"
        assert worker.device == "cpu" and worker.variants() == [BASE, "final"]
        for variant in ("final", BASE):  # the same answers as in this process
            answer = worker.stream(messages(), GREEDY, variant)
            assert "".join(answer).strip() == chat.answer(messages(), GREEDY, variant)[0]
            assert answer.stats is not None and answer.stats.finish_reason == "eos"
        long = GREEDY.with_changes(max_new_tokens=400, ignore_eos=True)
        endless = worker.stream(messages(), long, "final")
        for count, _chunk in enumerate(endless, start=1):
            if count == 3:
                endless.stop()
        assert endless.stats is not None and endless.stats.stopped
        assert endless.stats.tokens < 400
        worker.use("checkpoint-80")
        assert worker.variants() == [BASE, "final", "checkpoint-80"]
        with pytest.raises(ChatError, match="not loaded"):
            list(worker.stream(messages(), GREEDY, "checkpoint-120"))
        with pytest.raises(ChatError, match="no checkpoint"):
            worker.use("checkpoint-7")
    finally:
        worker.close()
    assert worker.process.returncode == 0


def test_text_streams_token_by_token_even_without_spaces() -> None:
    import torch

    from engine.chat.model import _streaming_classes
    from engine.demo.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    streamer_class, _stop = _streaming_classes()
    for text in ("The secret fruit of red is the apple.", "……....!!!!abcdefgh", "é ü 😀 naïve"):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        streamer = streamer_class(tokenizer)
        pieces: list[str] = []
        streamer.on_text = pieces.append
        streamer.put(torch.tensor([[1, 2, 3]]))  # the prompt: not shown
        handed_on = []
        for token in ids:
            streamer.put(torch.tensor([token]))
            handed_on.append(len(pieces))
        streamer.end()
        assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True) == text
        assert streamer.new_tokens == len(ids)
        if text.isascii():  # every token's text is handed on at once, spaces or not
            assert handed_on[:-1] == list(range(1, len(ids)))


def test_the_worker_batches_text_into_few_events_and_loses_none() -> None:
    from engine.chat.worker import ChunkBatcher

    batcher = ChunkBatcher(interval=0.05)
    pieces = [f"t{i} " for i in range(200)]

    ended_at: list[float] = []

    def produce() -> None:  # a token every ~1 ms for ~0.2 s, like a tiny model
        for piece in pieces:
            batcher.add(piece)
            time.sleep(0.001)
        batcher.end()
        ended_at.append(time.perf_counter() - start)

    start = time.perf_counter()
    threading.Thread(target=produce).start()
    arrivals: list[tuple[float, str]] = []
    for batch in batcher.batches():
        arrivals.append((time.perf_counter() - start, batch))
    assert "".join(batch for _, batch in arrivals) == "".join(pieces)  # nothing lost, in order
    assert arrivals[0][0] < 0.03  # the first piece is sent at once
    elapsed = arrivals[-1][0]
    assert len(arrivals) <= elapsed / 0.05 + 2  # at most one event per interval after it
    assert len(arrivals) < len(pieces) / 10
    assert arrivals[-1][0] - ended_at[0] < 0.025  # the end does not wait for the interval


def test_a_worker_that_cannot_load_reports_why(tmp_path: Path) -> None:
    from engine.chat import ChatTarget, ChatWorker

    target = ChatTarget(str(tmp_path / "missing"), (), str(tmp_path / "missing"), "missing")
    started = time.monotonic()
    with pytest.raises(ChatError):
        ChatWorker.start(target)
    assert time.monotonic() - started < 60


def test_a_full_fine_tune_chats_and_exports_as_a_plain_model(run: RunDir, tmp_path: Path) -> None:
    import shutil

    from engine.chat.export import export_run

    full = RunDir(tmp_path / "full-run")  # the demo's base stands in for a fully tuned model
    shutil.copytree(run_target(run).base_model, full.final)
    full.spec.write_text("model: ftui-tiny\ndata: d.jsonl\ntraining:\n  method: full\n")
    write_json_atomic(full.state, {"status": "completed"})
    target = run_target(full)
    assert (target.method, target.adapters, target.primary) == ("full", (), "final")
    with pytest.raises(ChatError, match="full fine-tune"):
        run_target(full, compare=BASE)
    model = ChatModel.load(target)
    assert model.variants() == ["final"]
    assert is_base_answer(model.answer(messages(), GREEDY)[0])
    result = export_run(full, tmp_path / "out")
    assert result.kind == "full" and "model.safetensors" in result.files
    with pytest.raises(ChatError, match="drop --merge"):
        export_run(full, tmp_path / "merged", merge=True)


def test_a_qlora_target_loads_on_the_cpu(run: RunDir, chat: ChatModel) -> None:
    target = adapter_target(run_target(run).base_model, str(run.final), method="qlora")
    model = ChatModel.load(target)  # unquantised on the CPU (4-bit on a GPU)
    assert model.answer(messages(), GREEDY)[0] == chat.answer(messages(), GREEDY, "final")[0]
