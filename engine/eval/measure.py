"""The measurements: the rows the loss is taken on (built by `engine.data` from the run's spec,
exactly as training built them), the token-weighted loss of one variant on them, and its
greedy answers; and the models they run on (`engine.chat.ChatModel`: one base, the checkpoints
as named adapters)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.chat import (
    BASE,
    ChatModel,
    ChatTarget,
    GenerationSettings,
    ProgressCallback,
    adapter_target,
    run_base_model,
    run_target,
)
from engine.eval.prompts import Prompt
from engine.eval.request import EvalRequest
from engine.eval.request import run_spec as read_run_spec
from engine.run.spec import RunSpec

Tick = Callable[[], None]  # one unit of work done (a batch, an answer)
LOGITS_BUDGET_BYTES = 1 << 30  # float32 logits held at once; big vocabularies get smaller batches


@dataclass(frozen=True)
class LossData:
    """The rows the loss is measured on and where they came from."""

    rows: list[dict[str, list[int]]]  # input_ids, attention_mask, labels (-100 outside answers)
    source: str  # "eval split", "training data", or the --data file
    path: str
    mode: str  # sft (answers only) or pretrain (every token)
    heldout: list[list[int]] | None  # the eval split's input ids (to find held-out prompts)

    @property
    def tokens(self) -> int:
        """Tokens the loss counts: labelled ones that have a token before them."""
        return sum(sum(1 for x in r["labels"][1:] if x != -100) for r in self.rows)


def run_spec(request: EvalRequest) -> RunSpec:
    return read_run_spec(request.run)


def loss_data(request: EvalRequest, spec: RunSpec, tokenizer: Any) -> LossData:
    """`--data FILE` whole; else the run's eval split; else (no split) its training data."""
    from engine.data import build_datasets

    seq_len, skip, mode = spec.training.seq_len, spec.skip_invalid, spec.mode
    if request.data is not None:
        train, _, report = build_datasets(
            request.data, tokenizer, fmt="auto", seq_len=seq_len, skip_invalid=skip, mode=mode
        )
        return LossData(
            _rows(train), Path(request.data).name, request.data, report.mode or mode, None
        )
    train, held, report = build_datasets(
        spec.data,
        tokenizer,
        fmt=spec.data_format,
        seq_len=seq_len,
        skip_invalid=skip,
        mode=mode,
        eval_fraction=spec.eval_fraction,
        seed=spec.hyper.seed,
    )
    if held is not None:
        rows = _rows(held)
        return LossData(
            rows, "eval split", spec.data, report.mode or mode, [r["input_ids"] for r in rows]
        )
    return LossData(_rows(train), "training data", spec.data, report.mode or mode, None)


def _rows(dataset: Any) -> list[dict[str, list[int]]]:
    keys = ("input_ids", "attention_mask", "labels")
    columns = {key: dataset[key] for key in keys}
    return [{key: list(columns[key][i]) for key in keys} for i in range(len(dataset))]


@contextlib.contextmanager
def answering_as(chat: ChatModel, variant: str) -> Iterator[Any]:
    """The model with `variant` active (base: the adapters disabled), under the chat's lock."""
    with chat.lock:
        model = chat.model
        if variant == BASE and chat.adapters:
            with model.disable_adapter():
                yield model
            return
        if chat.adapters:
            model.set_adapter(variant, inference_mode=True)
        yield model


def token_loss(
    chat: ChatModel, variant: str, rows: list[dict[str, list[int]]], batch: int, tick: Tick
) -> tuple[float, int]:
    """(summed negative log-likelihood, tokens) over every labelled token of `rows`: the
    training loss, weighted by tokens instead of averaged per batch."""
    import torch
    import torch.nn.functional as F

    pad = chat.tokenizer.pad_token_id or 0
    vocab = int(getattr(chat.model.config, "vocab_size", 0) or 32_000)
    total, count = 0.0, 0
    with answering_as(chat, variant) as model, torch.inference_mode():
        for chunk in _batches(rows, batch, vocab):
            width = max(len(r["input_ids"]) for r in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            labels = torch.full((len(chunk), width), -100, dtype=torch.long)
            for i, row in enumerate(chunk):
                n = len(row["input_ids"])
                ids[i, :n] = torch.tensor(row["input_ids"])
                mask[i, :n] = torch.tensor(row["attention_mask"])
                labels[i, :n] = torch.tensor(row["labels"])
            device = model.device
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            target = labels[:, 1:].to(device)
            nll = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                target.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            total += float(nll)
            count += int((target != -100).sum())
            tick()
    return total, count


def _batches(
    rows: list[dict[str, list[int]]], batch: int, vocab: int
) -> Iterator[list[dict[str, list[int]]]]:
    start = 0
    while start < len(rows):
        width = max(1, len(rows[start]["input_ids"]))
        fits = max(1, LOGITS_BUDGET_BYTES // (width * vocab * 4))
        size = max(1, min(batch, fits))
        yield rows[start : start + size]
        start += size


def batch_count(rows: list[dict[str, list[int]]], batch: int, vocab: int) -> int:
    return sum(1 for _ in _batches(rows, batch, vocab))


def perplexity(loss: float | None) -> float | None:
    if loss is None:
        return None
    return math.exp(loss) if loss < 700 else math.inf


def answers(
    chat: ChatModel, variant: str, prompts: list[Prompt], settings: GenerationSettings, tick: Tick
) -> list[dict[str, Any]]:
    """Each prompt's greedy answer (text and token count) from `variant`."""
    out = []
    for prompt in prompts:
        generation = chat.stream(prompt.messages, settings, variant)
        text = "".join(generation).strip()
        stats = generation.stats
        out.append({"answer": text, "tokens": stats.tokens if stats else None})
        tick()
    return out


# -- the models ------------------------------------------------------------------------------------


def _full_targets(request: EvalRequest) -> list[tuple[str, ChatTarget]]:
    """A full fine-tune: every checkpoint is a model of its own, loaded one after the other."""
    run = request.run
    base = adapter_target(run_base_model(run), device=request.device)
    targets = [(BASE, base)]
    for name in request.checkpoints:
        targets.append((name, run_target(run, name, device=request.device)))
    return targets


def loaded_variants(
    request: EvalRequest, progress: ProgressCallback | None
) -> Iterator[tuple[str, ChatModel, str]]:
    """(variant, a model that answers as it, the variant's name on that model) for the base and
    every chosen checkpoint. Adapters:
    one base, loaded once, every checkpoint a named adapter on it. Full fine-tunes: one model at
    a time, freed before the next."""
    run = request.run
    first = run_target(run, request.checkpoints[0], device=request.device)
    if first.adapters:
        chat = ChatModel.load(first, progress=progress)
        try:
            for name in request.checkpoints[1:]:
                chat.use(name)
            for variant in request.variants:
                yield variant, chat, variant
        finally:
            chat.close()
        return
    for variant, target in _full_targets(request):
        chat = ChatModel.load(target, progress=progress)
        try:
            yield variant, chat, chat.primary
        finally:
            chat.close()
