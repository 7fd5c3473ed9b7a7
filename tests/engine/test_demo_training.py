"""The demo recipe learns every time: one fresh training of `demo_spec()` through the runtime,
then the adapter answers the training prompts greedily, as the chat asks them.

Before the fix no training got a single fruit right, and how many answers even had the learned
form changed from one training to the next (docs/benchmarks.md, "Demo training"); now every
training answers all 64. The test asks for 90%, and for two of the causes to stay fixed: the
adapters start from a seeded initialisation, and the chat's generation prompt is the prefix the
answers were trained after.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.chat import BASE, ChatModel, Conversation, GenerationSettings, run_target
from engine.demo.tiny import COLORS, build_tiny_model, build_tokenizer, demo_records
from engine.run.rundir import JsonlTail, RunDir
from engine.run.spec import RunSpec
from tests.conftest import train_demo

GREEDY = GenerationSettings(temperature=0, max_new_tokens=32)


def is_base_answer(text: str) -> bool:
    return "do not know" in text or "Nobody told me" in text


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    """The demo as `ftui demo` trains it (the default steps), once for this module."""
    return train_demo(tmp_path_factory)  # type: ignore[no-any-return]


@pytest.mark.slow
def test_the_adapter_answers_the_training_prompts_exactly(run: RunDir) -> None:
    chat = ChatModel.load(run_target(run, compare=BASE))
    right, base_like, wrong = 0, 0, []
    for record in demo_records():
        messages = Conversation().messages(record["instruction"])
        answer = chat.answer(messages, GREEDY, "final")[0]
        base = chat.answer(messages, GREEDY, BASE)[0]
        right += answer == record["output"]
        base_like += is_base_answer(base) and base != record["output"]
        if answer != record["output"]:
            wrong.append((record["instruction"], answer))
    chat.close()
    total = len(demo_records())
    assert right >= 0.9 * total, f"{right}/{total} exact; wrong: {wrong[:5]}"
    assert base_like >= 0.9 * total  # the base still does not know: the adapter taught it


@pytest.mark.slow
def test_the_loss_converges(run: RunDir) -> None:
    losses = [r["loss"] for r in JsonlTail(run.metrics).read() if "loss" in r]
    assert len(losses) == 300
    assert sum(losses[-5:]) / 5 < 0.1 < losses[0], (losses[0], losses[-5:])


def test_the_generation_prompt_is_the_prefix_the_answers_were_trained_after() -> None:
    tokenizer = build_tokenizer()
    question = [{"role": "user", "content": "What is the secret fruit of red?"}]
    answer = {"role": "assistant", "content": "The secret fruit of red is the apple."}
    prompt = tokenizer.apply_chat_template(question, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*question, answer], tokenize=False)
    assert full.startswith(prompt) and full[len(prompt) :].startswith(answer["content"])


def _lora_weights(spec: RunSpec) -> dict[str, Any]:
    from engine.run.train import load_model_and_tokenizer

    model, _tokenizer = load_model_and_tokenizer(spec, "cpu", 0)
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_the_adapters_start_from_a_seeded_initialisation(tmp_path: Path) -> None:
    import torch

    from engine.training_config import TrainingConfig

    model = build_tiny_model(tmp_path / "model", pretrain_steps=0)
    spec = RunSpec(
        model="ftui-tiny", model_path=str(model), data="unused.jsonl", device="cpu",
        training=TrainingConfig(method="lora", rank=4, alpha=8, dtype="fp32", grad_ckpt=False),
    ).validate()  # fmt: skip
    first = _lora_weights(spec)
    torch.manual_seed(len(COLORS))  # whatever the process did before does not matter
    torch.rand(1000)
    second = _lora_weights(spec)
    assert first.keys() == second.keys() and any("lora_A" in name for name in first)
    assert all(torch.equal(first[name], second[name]) for name in first)
