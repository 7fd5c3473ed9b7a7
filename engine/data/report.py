"""engine.data.report: one part of `engine.data` (see the package docstring)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.data.encoding import (
    _document_ids,
    _render_checked,
    _Renderer,
    _tokenizer_name,
)
from engine.data.formats import (
    LoadedDataset,
    load_samples,
)
from engine.data.records import (
    HISTOGRAM_BUCKETS,
    DataReport,
    InvalidRecord,
    InvalidRecordError,
    LengthSummary,
    Sample,
)
from engine.data.tokens import HIGH, LOW, estimate_sample
from engine.errors import FtuiError


def _percentile(ordered: list[int], q: float) -> int:
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def length_summary(lengths: Sequence[int]) -> LengthSummary | None:
    if not lengths:
        return None
    ordered = sorted(lengths)
    return LengthSummary(
        p50=_percentile(ordered, 0.50),
        p90=_percentile(ordered, 0.90),
        p95=_percentile(ordered, 0.95),
        p99=_percentile(ordered, 0.99),
        max=ordered[-1],
        mean=sum(ordered) / len(ordered),
        total=sum(ordered),
    )


def _nice_width(raw: float) -> int:
    if raw <= 1:
        return 1
    exponent = 10 ** math.floor(math.log10(raw))
    for step in (1, 2, 2.5, 5, 10):
        width = step * exponent
        if width >= raw and float(width).is_integer():
            return int(width)
    return int(10 * exponent)  # pragma: no cover


def length_histogram(
    lengths: Sequence[int], buckets: int = HISTOGRAM_BUCKETS
) -> list[dict[str, int]]:
    """At most `buckets` equal-width buckets of round width covering the lengths:
    [{lo, hi, count}], hi exclusive; starts at 0 unless every length is far from it."""
    if not lengths:
        return []
    low, top = min(lengths), max(lengths)
    width = _nice_width((top + 1) / buckets)
    if low >= (top + 1) // 2:  # all lengths in the upper half: zoom in
        width = _nice_width((top - low + 1) / buckets)
    while True:
        start = 0 if low < (top + 1) // 2 else (low // width) * width
        count = max(1, math.ceil((top + 1 - start) / width))
        if count <= buckets:
            break
        width = _nice_width(width + 1)
    hist = [
        {"lo": start + i * width, "hi": start + (i + 1) * width, "count": 0} for i in range(count)
    ]
    for value in lengths:
        hist[min((value - start) // width, count - 1)]["count"] += 1
    return hist


def _measure(
    samples: list[Sample], tokenizer: Any
) -> tuple[list[Sample], list[int], list[InvalidRecord], bool]:
    """Token lengths with a real tokenizer; samples the template rejects become invalid."""
    render = _Renderer(tokenizer)
    kept: list[Sample] = []
    texts: list[str] = []
    owners: list[int] = []  # index into kept for each text
    invalid: list[InvalidRecord] = []
    plain: list[Sample] = []
    for sample in samples:
        if sample.text is not None:
            plain.append(sample)
            continue
        if sample.chosen is not None:
            sequences = [sample.turns + sample.chosen, sample.turns + (sample.rejected or [])]
        else:  # a chat sample, or kto's prompt + completion
            sequences = [sample.turns + (sample.completion or [])]
        try:
            rendered = [_render_checked(render, seq)[0] for seq in sequences]
        except InvalidRecordError as exc:
            invalid.append(sample.invalid(exc.reason))
            continue
        kept.append(sample)
        for text in rendered:
            texts.append(text)
            owners.append(len(kept) - 1)
    lengths = [0] * len(kept)
    for start in range(0, len(texts), 256):
        batch = tokenizer(texts[start : start + 256], add_special_tokens=False, verbose=False)
        for offset, ids in enumerate(batch["input_ids"]):
            owner = owners[start + offset]
            lengths[owner] = max(lengths[owner], len(ids))
    if plain:
        docs = _document_ids(tokenizer, [s.text or "" for s in plain])
        kept += plain
        lengths += [len(d) for d in docs]
    order = sorted(range(len(kept)), key=lambda k: kept[k].index)
    return [kept[k] for k in order], [lengths[k] for k in order], invalid, render.fallback


def _report(
    loaded: LoadedDataset,
    samples: list[Sample],
    lengths: list[int],
    extra_invalid: list[InvalidRecord],
    *,
    seq_len: int | None,
    tokenizer: Any,
    fallback: bool,
) -> DataReport:
    invalid = sorted(loaded.invalid + extra_invalid, key=lambda r: r.index)
    notes = list(loaded.notes)
    truncated = 0
    share: float | None = None
    if seq_len is not None and samples:
        if loaded.format == "text":
            notes.append(
                "pre-training text is concatenated and cut into blocks of seq_len: nothing is "
                "truncated"
            )
            share = 0.0
        else:
            truncated = sum(1 for n in lengths if n > seq_len)
            share = truncated / len(samples)
    total_range = None
    if tokenizer is None:
        low = sum(estimate_sample(s, ratios=LOW) for s in samples)
        high = sum(estimate_sample(s, ratios=HIGH) for s in samples)
        total_range = (min(low, sum(lengths)), max(high, sum(lengths)))
        notes.append(
            "token lengths are estimated from character classes (Han/kana/hangul, words, "
            "digits, line breaks, punctuation: each its own ratio, fitted to the Qwen2.5 and "
            f"DeepSeek-V4 tokenizers); with their vocabularies the total is {total_range[0]:,}"
            f"-{total_range[1]:,}; pass --model to measure with the model's own tokenizer"
        )
    elif fallback and loaded.format != "text":
        notes.append(
            "the tokenizer has no chat template: conversations use the fallback "
            "'### System:/### User:/### Assistant:' template with the EOS token after each answer"
        )
    if loaded.format == "preference":
        notes.append(
            "preference pairs: lengths are prompt + the longer of chosen/rejected; they train "
            "with --stage dpo, orpo, simpo or kto"
        )
    if loaded.format == "kto":
        notes.append("judged answers (completion/label): they train with --stage kto")
    longest = None
    if samples:
        k = max(range(len(samples)), key=lambda i: lengths[i])
        s = samples[k]
        longest = {
            "line": s.line,
            "row": s.row,
            "file": s.file,
            "location": s.where,
            "tokens": lengths[k],
        }
    return DataReport(
        path=loaded.path,
        format=loaded.format,
        records=loaded.records,
        valid=len(samples),
        invalid=invalid,
        empty=loaded.empty,
        duplicates=loaded.duplicates,
        lengths=length_summary(lengths),
        estimated=tokenizer is None,
        histogram=length_histogram(lengths),
        seq_len=seq_len,
        truncated=truncated,
        truncated_share=share,
        files=loaded.files,
        template=(
            None
            if tokenizer is None or loaded.format == "text"
            else ("fallback" if fallback else "chat")
        ),
        tokenizer=None if tokenizer is None else _tokenizer_name(tokenizer),
        longest=longest,
        notes=notes,
        total_range=total_range,
        skipped=list(loaded.skipped),
    )


def _check_seq_len(seq_len: int | None) -> None:
    if seq_len is not None and (not isinstance(seq_len, int) or seq_len < 1):
        raise FtuiError(f"sequence length {seq_len} is not positive", "use e.g. --seq-len 2048")


def check_dataset(
    path: Path | str,
    *,
    fmt: str = "auto",
    tokenizer: Any = None,
    seq_len: int | None = None,
    max_prompt_len: int | None = None,
) -> DataReport:
    """Read and validate a dataset; token lengths measured with `tokenizer` or estimated.
    Preference data also get `report.preference` (pairs, identical pairs, prompts over
    `max_prompt_len`, default half of `seq_len`, the truncation share of each side)."""
    _check_seq_len(seq_len)
    loaded = load_samples(path, fmt=fmt)
    if tokenizer is None:
        samples = loaded.samples
        lengths = [estimate_sample(s) for s in samples]
        extra: list[InvalidRecord] = []
        fallback = False
    else:
        samples, lengths, extra, fallback = _measure(loaded.samples, tokenizer)
    report = _report(
        loaded, samples, lengths, extra, seq_len=seq_len, tokenizer=tokenizer, fallback=fallback
    )
    if loaded.format in ("preference", "kto"):
        from engine.data.preference import preference_summary

        if max_prompt_len is None and seq_len is not None:
            max_prompt_len = max(1, seq_len // 2)  # the launch's default
        report.preference = preference_summary(
            samples, tokenizer, seq_len=seq_len, max_prompt_len=max_prompt_len
        )
    return report


def load_tokenizer(model: str) -> tuple[Any, str | None]:
    """(tokenizer or None, a note for the report) for a model name, offline.

    A local directory or an HF-cache model loads with `AutoTokenizer.from_pretrained(...,
    local_files_only=True)`; a built-in profile tries the HF cache by its hub id. Without local
    tokenizer files the tokenizer is None and the note says lengths are estimated."""
    from engine.models import resolve_model

    arch = resolve_model(model)
    source = arch.path or arch.hf_id
    if source is None:  # pragma: no cover - profiles carry an hf_id
        return None, f"{arch.name} names no tokenizer: token lengths are estimated"
    if arch.path is None and arch.hf_id is not None:
        from engine.paths import hf_hub_cache

        if not (hf_hub_cache() / f"models--{arch.hf_id.replace('/', '--')}").is_dir():
            return None, (
                f"no tokenizer for {arch.name} on this machine (`hf download {arch.hf_id}` "
                "fetches it): token lengths are estimated from characters"
            )
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return None, "transformers is not installed: token lengths are estimated"
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        where = "in" if arch.path else "for"
        fetch = f" (`hf download {arch.hf_id}` fetches it)" if arch.hf_id else ""
        return None, (
            f"no tokenizer {where} {source} on this machine{fetch}: token lengths are estimated "
            f"from characters ({reason})"
        )
    return tokenizer, None
