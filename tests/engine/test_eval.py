"""engine.eval without a model: which samples are held out, what a prompts file gives, and the
eval perplexity series the dashboard charts."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from engine.errors import FtuiError
from engine.eval.prompts import heldout_prompts, read_prompts


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from engine.demo.tiny import build_tokenizer

    return build_tokenizer()


@pytest.fixture
def demo_data(tmp_path: Path) -> Path:
    from engine.demo.tiny import write_demo_dataset

    return write_demo_dataset(tmp_path / "fruits.jsonl")


def test_heldout_prompts_are_the_eval_split(tokenizer: Any, demo_data: Path) -> None:
    from engine.data import build_datasets, encode_conversation

    train, held, _ = build_datasets(demo_data, tokenizer, seq_len=128, eval_fraction=0.25, seed=7)
    assert held is not None
    rows = [list(r) for r in held["input_ids"]]
    prompts = heldout_prompts(str(demo_data), tokenizer, rows, count=100, fmt="auto", seq_len=128)
    assert len(prompts) == len(rows) == 16
    train_rows = {tuple(r) for r in train["input_ids"]}
    for prompt in prompts:
        assert prompt.reference and prompt.messages[-1]["role"] == "user"
        turns = [*prompt.messages, {"role": "assistant", "content": prompt.reference}]
        ids = encode_conversation(turns, tokenizer).truncate(128)["input_ids"]
        assert ids in rows and tuple(ids) not in train_rows
        assert prompt.source.startswith("eval split")
    first_two = heldout_prompts(str(demo_data), tokenizer, rows, count=2, fmt="auto", seq_len=128)
    assert first_two == prompts[:2]


def test_without_a_split_the_first_training_samples(tokenizer: Any, demo_data: Path) -> None:
    prompts = heldout_prompts(str(demo_data), tokenizer, None, count=3, fmt="auto", seq_len=128)
    records = [json.loads(line) for line in demo_data.read_text().splitlines()[:3]]
    assert [p.text for p in prompts] == [r["instruction"] for r in records]
    assert [p.reference for p in prompts] == [r["output"] for r in records]
    assert all(p.source.startswith("training data") for p in prompts)


def test_prompts_files(tmp_path: Path) -> None:
    text = tmp_path / "prompts.txt"
    text.write_text("first question\n\n  second question  \n")
    prompts = read_prompts(text)
    assert [(p.text, p.reference) for p in prompts] == [
        ("first question", None),
        ("second question", None),
    ]
    chat = tmp_path / "chat.jsonl"
    conversation = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "and?"},
        {"role": "assistant", "content": "bye"},
    ]
    chat.write_text(json.dumps({"messages": conversation}) + "\n")
    (prompt,) = read_prompts(chat)
    assert prompt.messages == conversation[:4] and prompt.reference == "bye"
    assert prompt.text == "and?"
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(FtuiError, match="holds no prompt"):
        read_prompts(empty)
    documents = tmp_path / "docs.jsonl"
    documents.write_text(json.dumps({"text": "a document"}) + "\n")
    with pytest.raises(FtuiError, match="plain text documents"):
        read_prompts(documents)


def test_the_dashboard_keeps_eval_perplexity(tmp_path: Path) -> None:
    from engine.monitor.store import MetricsStore

    store = MetricsStore(tmp_path)
    store.add_metrics({"t": 1.0, "step": 10, "loss": 2.0})
    store.add_metrics({"t": 2.0, "step": 10, "eval_loss": 1.5})
    store.add_metrics({"t": 3.0, "step": 20, "eval_loss": 1.25})
    xs, ys = store.eval_perplexity.xy()
    assert xs == [10.0, 20.0]
    assert ys == pytest.approx([math.exp(1.5), math.exp(1.25)])
