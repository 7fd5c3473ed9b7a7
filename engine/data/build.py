"""engine.data.build: one part of `engine.data` (see the package docstring)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from engine.data.encoding import (
    EncodedConversation,
    _document_ids,
    _has_chat_template,
    encode_conversation,
)
from engine.data.formats import (
    load_samples,
)
from engine.data.records import (
    IGNORE_INDEX,
    MODES,
    DataReport,
    InvalidRecord,
    InvalidRecordError,
    Sample,
)
from engine.data.report import (
    _check_seq_len,
    _report,
)
from engine.errors import FtuiError


def _refuse_invalid(report: DataReport) -> None:
    first = ", ".join(
        (f"{item.file} " if len(report.files) > 1 else "") + item.location
        for item in report.invalid[:5]
    )
    more = ", ..." if len(report.invalid) > 5 else ""
    if not report.valid:
        raise FtuiError(
            f"none of the {report.records} records in {report.path} is valid ({first}{more}; "
            f"first reason: {report.invalid[0].reason})",
            f"fix them (`ftui data check {report.path}` lists every one): there is nothing to "
            "train on",
        )
    raise FtuiError(
        f"{len(report.invalid)} of {report.records} records in {report.path} are invalid "
        f"({first}{more}; first reason: {report.invalid[0].reason})",
        f"fix them (`ftui data check {report.path}` lists every one), or pass --skip-invalid "
        "to train on the valid records only",
    )


def split_indices(n: int, eval_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic train/eval split of n items for a seed (both lists sorted)."""
    if not 0.0 <= eval_fraction < 1.0:
        raise FtuiError(
            f"eval fraction {eval_fraction} is not in [0, 1)", "use e.g. --eval-fraction 0.05"
        )
    if eval_fraction == 0.0 or n == 0:
        return list(range(n)), []
    n_eval = max(1, round(n * eval_fraction))
    if n_eval >= n:
        raise FtuiError(
            f"{n} valid records are too few to hold out {eval_fraction:.0%} for evaluation",
            "use a smaller eval fraction or more data",
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return sorted(order[n_eval:]), sorted(order[:n_eval])


def _to_dataset(rows: dict[str, list[list[int]]]) -> Any:
    from datasets import Dataset  # type: ignore[import-untyped]

    return Dataset.from_dict(rows)


def build_datasets(
    path: Path | str,
    tokenizer: Any,
    *,
    fmt: str = "auto",
    seq_len: int,
    eval_fraction: float = 0.0,
    seed: int = 0,
    skip_invalid: bool = False,
    mode: str = "sft",
) -> tuple[Any, Any, DataReport]:
    """Tokenised `datasets.Dataset`s (input_ids, attention_mask, labels): (train, eval or None,
    report). mode "sft" (chat formats), "pretrain" (text) or "auto" (by the format)."""
    _check_seq_len(seq_len)
    if mode not in MODES:
        raise FtuiError(f"unknown training mode {mode!r}", f"use one of: {', '.join(MODES)}")
    if not 0.0 <= eval_fraction < 1.0:
        raise FtuiError(
            f"eval fraction {eval_fraction} is not in [0, 1)", "use e.g. --eval-fraction 0.05"
        )
    loaded = load_samples(path, fmt=fmt)
    if loaded.format == "preference":
        raise FtuiError(
            f"{loaded.path} holds preference pairs (chosen/rejected): supervised fine-tuning on "
            "them is not supported yet",
            "train on the chosen answers (convert each pair to a conversation that ends with its "
            "chosen response), or wait for the DPO trainer",
        )
    if mode == "auto":
        mode = "pretrain" if loaded.format == "text" else "sft"
    if mode == "pretrain" and loaded.format != "text":
        raise FtuiError(
            f"pre-training needs plain text records, but {loaded.path} is {loaded.format}",
            'use a dataset of {"text": ...} records, or train in SFT mode',
        )
    if mode == "sft" and loaded.format == "text":
        raise FtuiError(
            f"{loaded.path} holds plain text ({{'text': ...}}): that is for continued "
            "pre-training, not SFT",
            "train in pre-training mode, or use a chat/instruction dataset",
        )
    if mode == "pretrain":
        samples = loaded.samples
        docs = _document_ids(tokenizer, [s.text or "" for s in samples])
        report = _report(
            loaded,
            samples,
            [len(d) for d in docs],
            [],
            seq_len=seq_len,
            tokenizer=tokenizer,
            fallback=False,
        )
        if report.invalid and (not skip_invalid or not report.valid):
            _refuse_invalid(report)
        if not samples:
            raise FtuiError(f"{loaded.path} has no valid records", "fix the dataset")
        train_idx, eval_idx = split_indices(len(samples), eval_fraction, seed)

        def blocks(indices: list[int]) -> dict[str, list[list[int]]]:
            stream = [t for i in indices for t in docs[i]]
            chunks = [stream[i : i + seq_len] for i in range(0, len(stream), seq_len)]
            return {
                "input_ids": chunks,
                "attention_mask": [[1] * len(c) for c in chunks],
                "labels": [list(c) for c in chunks],
            }

        train_rows = blocks(train_idx)
        eval_rows = blocks(eval_idx) if eval_idx else None
        report.mode = "pretrain"
    else:
        encoded: list[EncodedConversation] = []
        kept: list[Sample] = []
        extra: list[InvalidRecord] = []
        fallback = not _has_chat_template(tokenizer)
        for sample in loaded.samples:
            try:
                enc = encode_conversation(sample.turns, tokenizer)
            except InvalidRecordError as exc:
                extra.append(sample.invalid(exc.reason))
                continue
            encoded.append(enc)
            kept.append(sample)
        report = _report(
            loaded,
            kept,
            [len(e.input_ids) for e in encoded],
            extra,
            seq_len=seq_len,
            tokenizer=tokenizer,
            fallback=fallback,
        )
        if report.invalid and (not skip_invalid or not report.valid):
            _refuse_invalid(report)
        rows = [e.truncate(seq_len) for e in encoded]
        usable = [k for k, row in enumerate(rows) if any(x != IGNORE_INDEX for x in row["labels"])]
        report.no_labels = len(rows) - len(usable)
        if report.no_labels:
            report.notes.append(
                f"{report.no_labels} samples have no answer token left after truncation to "
                f"{seq_len} tokens and are left out (raise seq_len to keep them)"
            )
        if not usable:
            raise FtuiError(
                f"{loaded.path} has no sample with an answer within {seq_len} tokens",
                "fix the dataset or raise the sequence length",
            )
        train_idx, eval_idx = split_indices(len(usable), eval_fraction, seed)

        def pick(indices: list[int]) -> dict[str, list[list[int]]]:
            chosen = [rows[usable[i]] for i in indices]
            return {
                key: [row[key] for row in chosen]
                for key in ("input_ids", "attention_mask", "labels")
            }

        train_rows = pick(train_idx)
        eval_rows = pick(eval_idx) if eval_idx else None
        report.mode = "sft"
    report.train_rows = len(train_rows["input_ids"])
    report.eval_rows = len(eval_rows["input_ids"]) if eval_rows is not None else None
    train = _to_dataset(train_rows)
    evaluation = _to_dataset(eval_rows) if eval_rows is not None else None
    return train, evaluation, report
