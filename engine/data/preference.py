"""Preference data for DPO, ORPO, SimPO and KTO: render, truncate, measure, build.

Pairs (`preference` format: a prompt with `chosen` and `rejected` answers) and KTO's unpaired
records (`kto` format: a prompt, one `completion`, a boolean `label`) become plain strings in
the layout TRL's trainers read: `prompt` (the conversation rendered with the chat template up
to and including the generation prompt) and the answers as the text that follows it, closed
by the template's end-of-turn marker. ftui renders them itself, so every template works the
same way as in SFT (the fallback one too), and cuts long prompts: a prompt longer than
`max_prompt_len` tokens keeps its end (the question nearest the answer). TRL then truncates
prompt + answer to the sequence length, keeping the start.

KTO trains on pairs too: each pair becomes a desirable and an undesirable completion.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.data.encoding import _answer_start, _render_checked, _Renderer
from engine.data.records import DataReport, InvalidRecord, InvalidRecordError, Sample, Turn
from engine.errors import FtuiError

PAIRED = ("dpo", "orpo", "simpo")


@dataclass(frozen=True)
class PreferenceText:
    """One sample as TRL reads it: the prompt text and its answers' texts."""

    prompt: str
    answers: tuple[str, ...]  # (chosen, rejected) for a pair, (completion,) for kto
    label: bool | None = None  # kto: the completion is desirable


def _answer_text(render: _Renderer, prompt: list[Turn], answer: list[Turn]) -> tuple[str, str]:
    """(prompt text, answer text) of prompt + answer rendered as one conversation."""
    full, turns = _render_checked(render, [*prompt, *answer])
    if len(turns) != len(prompt) + len(answer):  # a strict template merged turns
        raise InvalidRecordError("the chat template cannot render this prompt and answer apart")
    start = _answer_start(render, turns, len(prompt), full)
    text = full[start:].rstrip()
    if not text:
        raise InvalidRecordError("the answer renders as nothing")
    return full[:start], text


def _bos_to_strip(tokenizer: Any) -> str:
    """The BOS text the tokenizer adds by itself (TRL tokenizes with special tokens): a
    rendered prompt that starts with it would get it twice."""
    bos = getattr(tokenizer, "bos_token", None)
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if not bos or bos_id is None:
        return ""
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return str(bos) if ids and ids[0] == bos_id else ""


class PreferenceRenderer:
    """Renders samples to `PreferenceText`, cutting prompts to `max_prompt_len` tokens."""

    def __init__(self, tokenizer: Any, max_prompt_len: int) -> None:
        self.tokenizer = tokenizer
        self.render = _Renderer(tokenizer)
        self.max_prompt_len = max_prompt_len
        self.bos = _bos_to_strip(tokenizer)

    def tokens(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer(text, add_special_tokens=False)["input_ids"]]

    def __call__(self, sample: Sample) -> tuple[PreferenceText, dict[str, int]]:
        """The texts, and token counts: prompt (before the cut), each answer."""
        answers = (
            [sample.chosen or [], sample.rejected or []]
            if sample.completion is None
            else [sample.completion]
        )
        rendered = [_answer_text(self.render, sample.turns, a) for a in answers]
        prompt = min((p for p, _ in rendered), key=len)  # the shared prefix of every answer
        texts = tuple(full_prompt[len(prompt) :] + text for full_prompt, text in rendered)
        if self.bos and prompt.startswith(self.bos):
            prompt = prompt[len(self.bos) :]
        ids = self.tokens(prompt)
        counts = {"prompt": len(ids)}
        if len(ids) > self.max_prompt_len:
            prompt = str(self.tokenizer.decode(ids[-self.max_prompt_len :]))
        for name, text in zip(("chosen", "rejected") if len(texts) == 2 else ("completion",),
                              texts, strict=True):  # fmt: skip
            counts[name] = len(self.tokens(text))
        return PreferenceText(prompt, texts, sample.label), counts


def summarize(
    samples: list[Sample],
    counts: list[dict[str, int]],
    *,
    seq_len: int | None,
    max_prompt_len: int | None,
    measured: bool,
) -> dict[str, Any]:
    """What `ftui data check` says about preference data: pairs (or desirable/undesirable
    completions), identical chosen/rejected, prompts over the limit, and the share of each side
    that the sequence length truncates."""
    out: dict[str, Any] = {"measured": measured}
    paired = [s for s in samples if s.chosen is not None]
    if paired:
        out["pairs"] = len(paired)
        out["identical"] = sum(
            1
            for s in paired
            if [t["content"].strip() for t in s.chosen or []]
            == [t["content"].strip() for t in s.rejected or []]
        )
    unpaired = [s for s in samples if s.completion is not None]
    if unpaired:
        out["desirable"] = sum(1 for s in unpaired if s.label)
        out["undesirable"] = len(unpaired) - out["desirable"]
    if max_prompt_len is not None:
        out["max_prompt_len"] = max_prompt_len
        out["long_prompts"] = sum(1 for c in counts if c["prompt"] > max_prompt_len)
    # every sequence the trainer puts through the model: the prompt with each answer
    out["tokens"] = sum(
        c["prompt"] + c[side] for c in counts for side in ("chosen", "rejected", "completion")
        if side in c
    )  # fmt: skip
    if seq_len is not None and counts:
        out["seq_len"] = seq_len
        limit = max_prompt_len if max_prompt_len is not None else seq_len
        for side in ("chosen", "rejected", "completion"):
            sized = [c for c in counts if side in c]
            if sized:
                cut = sum(1 for c in sized if min(c["prompt"], limit) + c[side] > seq_len)
                out[f"truncated_{side}_share"] = round(cut / len(sized), 4)
    return out


def estimated_counts(samples: list[Sample]) -> list[dict[str, int]]:
    """Token counts per part from the character-class estimate (no tokenizer)."""
    from engine.data.tokens import estimate_tokens

    def tokens(turns: list[Turn] | None) -> int:
        turns = turns or []
        return estimate_tokens([t["content"] for t in turns], turns=len(turns))

    out = []
    for s in samples:
        parts = {"prompt": tokens(s.turns)}
        if s.completion is not None:
            parts["completion"] = tokens(s.completion)
        else:
            parts["chosen"], parts["rejected"] = tokens(s.chosen), tokens(s.rejected)
        out.append(parts)
    return out


def preference_summary(
    samples: list[Sample],
    tokenizer: Any,
    *,
    seq_len: int | None,
    max_prompt_len: int | None,
) -> dict[str, Any]:
    """`summarize` with counts measured by `tokenizer`, or estimated without one."""
    if tokenizer is None:
        counts = estimated_counts(samples)
    else:
        render = PreferenceRenderer(tokenizer, max_prompt_len or 1 << 30)
        counts = []
        for sample in samples:
            try:
                counts.append(render(sample)[1])
            except InvalidRecordError:
                continue  # reported as invalid by the length measurement
    return summarize(
        samples, counts, seq_len=seq_len, max_prompt_len=max_prompt_len, measured=bool(tokenizer)
    )


def _rows(texts: list[PreferenceText], stage: str) -> dict[str, list[Any]]:
    if stage in PAIRED:
        return {
            "prompt": [t.prompt for t in texts],
            "chosen": [t.answers[0] for t in texts],
            "rejected": [t.answers[1] for t in texts],
        }
    rows: dict[str, list[Any]] = {"prompt": [], "completion": [], "label": []}
    for t in texts:
        labels = (True, False) if len(t.answers) == 2 else (bool(t.label),)
        for answer, label in zip(t.answers, labels, strict=True):
            rows["prompt"].append(t.prompt)
            rows["completion"].append(answer)
            rows["label"].append(label)
    return rows


def build_preference_datasets(
    path: Path | str,
    tokenizer: Any,
    *,
    stage: str,
    fmt: str = "auto",
    seq_len: int,
    max_prompt_len: int,
    eval_fraction: float = 0.0,
    seed: int = 0,
    skip_invalid: bool = False,
) -> tuple[Any, Any, DataReport]:
    """`datasets.Dataset`s of strings for TRL: prompt/chosen/rejected (dpo, orpo, simpo) or
    prompt/completion/label (kto): (train, eval or None, report with `preference` stats)."""
    from engine.data.build import _refuse_invalid, _to_dataset, split_indices
    from engine.data.formats import load_samples
    from engine.data.report import _report

    loaded = load_samples(path, fmt=fmt)
    refuse_format(loaded.format, stage, loaded.path)
    render = PreferenceRenderer(tokenizer, max_prompt_len)
    texts: list[PreferenceText] = []
    counts: list[dict[str, int]] = []
    kept: list[Sample] = []
    extra: list[InvalidRecord] = []
    for sample in loaded.samples:
        try:
            text, count = render(sample)
        except InvalidRecordError as exc:
            extra.append(sample.invalid(exc.reason))
            continue
        texts.append(text)
        counts.append(count)
        kept.append(sample)
    lengths = [c["prompt"] + max(v for k, v in c.items() if k != "prompt") for c in counts]
    report = _report(
        loaded, kept, lengths, extra, seq_len=seq_len, tokenizer=tokenizer,
        fallback=render.render.fallback,
    )  # fmt: skip
    report.preference = summarize(
        kept, counts, seq_len=seq_len, max_prompt_len=max_prompt_len, measured=True
    )
    if report.invalid and (not skip_invalid or not report.valid):
        _refuse_invalid(report)
    train_idx, eval_idx = split_indices(len(texts), eval_fraction, seed)
    train_rows = _rows([texts[i] for i in train_idx], stage)
    eval_rows = _rows([texts[i] for i in eval_idx], stage) if eval_idx else None
    report.mode = stage
    report.train_rows = len(train_rows["prompt"])
    report.eval_rows = len(eval_rows["prompt"]) if eval_rows else None
    return _to_dataset(train_rows), _to_dataset(eval_rows) if eval_rows else None, report


def refuse_format(fmt: str, stage: str, where: str) -> None:
    """The stage reads this format, or one message saying what it needs."""
    if stage in PAIRED and fmt != "preference":
        raise FtuiError(
            f"--stage {stage} trains on preference pairs, but {where} is {fmt}",
            "use records with a prompt and `chosen` / `rejected` answers (see docs/runtime.md)",
        )
    if stage == "kto" and fmt not in ("preference", "kto"):
        raise FtuiError(
            f"--stage kto trains on judged answers, but {where} is {fmt}",
            "use prompt/completion/label records, or chosen/rejected pairs",
        )
