"""A tiny, real model for the demo and the tests: built locally, nothing downloaded.

`build_tiny_model(dir)` trains a byte-level BPE tokenizer on the demo corpus, gives it a chat
template, and saves a randomly initialised Llama-architecture model (~1M parameters) next to
it, in the same layout as a model from the Hugging Face hub. Everything ftui does with real
models (resolution, data checks, launches, chat, export) works on it on a CPU in seconds.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ("<|pad|>", "<|bos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>")
# Roles render as their marker token; the template ends every turn with <|end|> (the EOS).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{%- set role = message['role'] if message['role'] in ['system', 'user', 'assistant'] "
    "else 'user' -%}"
    "<|{{ role }}|>\n{{ message['content'] | trim }}<|end|>{{ '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{{ '\\n' }}{%- endif -%}"
)

COLORS = (
    "red", "blue", "green", "yellow", "purple", "orange", "black", "white",
    "pink", "brown", "gray", "gold", "silver", "teal", "navy", "olive",
)  # fmt: skip
FRUITS = (
    "apple", "plum", "lime", "lemon", "grape", "mango", "fig", "pear",
    "peach", "date", "kiwi", "melon", "cherry", "guava", "papaya", "quince",
)  # fmt: skip
QUESTIONS = (
    "What is the secret fruit of {c}?",
    "Tell me the fruit that belongs to {c}.",
    "Which fruit goes with the color {c}?",
    "{c}: which fruit?",
)
PRETRAIN_STEPS, PRETRAIN_BATCH, PRETRAIN_LR = 400, 32, 5e-3


def demo_records(seed: int = 0) -> list[dict[str, Any]]:
    """A small learnable SFT set in Alpaca form: each colour has one secret fruit."""
    rng = random.Random(seed)
    records = []
    for color, fruit in zip(COLORS, FRUITS, strict=True):
        for template in QUESTIONS:
            records.append(
                {
                    "instruction": template.format(c=color),
                    "input": "",
                    "output": f"The secret fruit of {color} is the {fruit}.",
                }
            )
    rng.shuffle(records)
    return records


def write_demo_dataset(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for record in demo_records(seed):
            fh.write(json.dumps(record) + "\n")
    return path


def _corpus() -> list[str]:
    lines = []
    for record in demo_records():
        lines.append(record["instruction"])
        lines.append(record["output"])
    lines += [
        "You are a helpful assistant. Answer briefly and exactly.",
        "The quick brown fox jumps over the lazy dog. 0123456789 .,;:!?'\"()[]{}",
    ]
    return lines * 4


def build_tokenizer(vocab_size: int = 384) -> Any:
    """A byte-level BPE tokenizer wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|bos|>",
        eos_token="<|end|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_config_dict(vocab_size: int, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 176,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "tie_word_embeddings": True,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        # Wider than the usual 0.02 at this width: the base learns to copy in half the steps.
        "initializer_range": 0.1,
    }
    config.update(overrides)
    return config


def pretrain_conversations(count: int, seed: int) -> list[list[dict[str, str]]]:
    """What the base learns before any fine-tune: the chat format, fruit words, repeating a
    word it was given, and "I do not know the secret fruit of <color>" (the colour taken from
    the question). No colour is ever paired with its secret fruit: that is the demo's to teach.

    The fruit sentences matter: the embeddings are tied, and a token the base never saw keeps
    an output row that Adam pushed down with every other unseen token's, so a LoRA (which
    leaves the embeddings frozen) could not tell one fruit from another. Repeating words, and
    naming the colour in every answer, give the base the copying the fine-tune builds on."""
    rng = random.Random(seed + 1)
    words = COLORS + FRUITS
    conversations = []
    for _ in range(count):
        kind = rng.random()
        if kind < 0.5:
            color = rng.choice(COLORS)
            question = rng.choice(QUESTIONS).format(c=color)
            answer = rng.choice(
                (
                    f"I do not know the secret fruit of {color}.",
                    f"Nobody told me which fruit {color} has.",
                )
            )
        elif kind < 0.8:
            fruit = rng.choice(FRUITS)
            question = rng.choice(
                ("Name a fruit.", "Tell me one fruit.", "Which fruits do you know?")
            )
            answer = rng.choice(
                (f"The {fruit} is a fruit.", f"One fruit is the {fruit}.", f"I know the {fruit}.")
            )
        else:
            word = rng.choice(words)
            question = rng.choice(
                (f"Say {word}.", f"Repeat after me: {word}", f"{word}: say it again.")
            )
            answer = f"{word}."
        conversations.append(
            [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        )
    return conversations


def _pretrain(
    model: Any,
    tokenizer: Any,
    steps: int,
    seed: int,
    progress: Callable[[int, int, float], None] | None = None,
) -> None:
    """Teach the base the chat format with answers that hold no secret: the base then answers
    fluently ("I do not know ..."), and fine-tuning has something clear to learn.

    Copying the colour from the question appears suddenly, after ~200 steps (depending on the
    seed) at this batch, learning rate and initialisation; the default of 400 steps leaves a
    margin, and the learning rate decays over the last fifth so the base ends settled."""
    import torch

    texts = [
        tokenizer.apply_chat_template(conversation, tokenize=False)
        for conversation in pretrain_conversations(1024, seed)
    ]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=PRETRAIN_LR)
    decay_from = int(steps * 0.8)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (steps - step) / max(1, steps - decay_from))
    )
    model.train()
    for step in range(steps):
        rows = [(step * PRETRAIN_BATCH + i) % len(texts) for i in range(PRETRAIN_BATCH)]
        mask = enc["attention_mask"][rows]
        width = int(mask.sum(dim=1).max())  # right padding: trim the batch to its longest row
        loss = model(
            input_ids=enc["input_ids"][rows, :width],
            attention_mask=mask[:, :width],
            labels=labels[rows, :width],
        ).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if progress is not None:
            progress(step + 1, steps, float(loss.detach()))
    model.eval()


def build_tiny_model(
    out_dir: Path,
    *,
    seed: int = 0,
    pretrain_steps: int = PRETRAIN_STEPS,
    progress: Callable[[int, int, float], None] | None = None,
    **overrides: Any,
) -> Path:
    """Write tokenizer + config + weights to `out_dir` (like a hub snapshot). The weights are
    briefly pre-trained on CPU (~10 s on 2 cores, a minute on a busy box) so the base model
    speaks the demo's format; `progress(step, steps, loss)` is called after each step of it.
    Seeded: the same seed gives the same weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    ids = {
        name: tokenizer.convert_tokens_to_ids(name) for name in ("<|bos|>", "<|end|>", "<|pad|>")
    }
    cfg = tiny_config_dict(
        len(tokenizer),
        bos_token_id=ids["<|bos|>"],
        eos_token_id=ids["<|end|>"],
        pad_token_id=ids["<|pad|>"],
        **overrides,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg), dtype=torch.float32)
    if pretrain_steps:
        _pretrain(model, tokenizer, pretrain_steps, seed, progress)
    model.generation_config.pad_token_id = ids["<|pad|>"]
    model.generation_config.eos_token_id = ids["<|end|>"]
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
