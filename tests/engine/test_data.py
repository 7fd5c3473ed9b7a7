"""engine.data: format detection, validation with locations, unusable files, SFT label masks,
the fallback template, pre-training blocks, deterministic splits, import hygiene."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.data import (
    FALLBACK_CHAT_TEMPLATE,
    IGNORE_INDEX,
    DataReport,
    DatasetUnusableError,
    build_datasets,
    check_dataset,
    detect_format,
    length_histogram,
    length_summary,
    load_samples,
    split_indices,
    tokenize_conversation,
    tokenize_pretraining,
)
from engine.errors import FtuiError
from tests.conftest import REPO

DATA = REPO / "tests" / "data" / "datasets"
REAL = REPO / "tests" / "data" / "tokens"  # slices of real datasets, gzipped (see its README)
END = "<|end|>"


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from engine.demo.tiny import build_tokenizer

    return build_tokenizer()


@pytest.fixture
def bare_tokenizer(tokenizer: Any) -> Any:
    """The tiny tokenizer without a chat template (restored afterwards)."""
    template = tokenizer.chat_template
    tokenizer.chat_template = None
    yield tokenizer
    tokenizer.chat_template = template


def labelled_text(tokenizer: Any, row: dict[str, list[int]]) -> str:
    ids = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100]
    return str(tokenizer.decode(ids))


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# -- import hygiene ------------------------------------------------------------------------------


def test_import_does_not_load_the_ml_stack() -> None:
    code = (
        "import sys, engine.data\n"
        "heavy = {'torch', 'transformers', 'datasets', 'pyarrow', 'pandas', 'rich', 'textual'}\n"
        "print(','.join(sorted(heavy & {m.split('.')[0] for m in sys.modules})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"import engine.data loaded {out.stdout.strip()}"


# -- detection of good files ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt", "records"),
    [
        ("good_alpaca.json", "alpaca", 4),
        ("good_alpaca.jsonl", "alpaca", 3),
        ("good_alpaca.csv", "alpaca", 3),
        ("good_sharegpt.json", "sharegpt", 3),
        ("good_messages.jsonl", "messages", 4),
        ("good_messages.csv", "messages", 1),
        ("good_text.jsonl", "text", 3),
        ("good_preference.json", "preference", 3),
        ("good_folder", "alpaca", 3),
    ],
)
def test_good_files_are_detected_and_valid(name: str, fmt: str, records: int) -> None:
    report = check_dataset(DATA / name)
    assert (report.format, report.records, report.valid) == (fmt, records, records)
    assert report.ok and report.invalid == [] and report.estimated
    assert report.lengths is not None and report.lengths.max >= report.lengths.p50 > 0
    json.dumps(report.to_dict())  # serialisable


def test_a_folder_reads_every_data_file_and_skips_the_rest() -> None:
    report = check_dataset(DATA / "good_folder")
    assert report.files == ["more/part-2.csv", "part-1.jsonl"]


def test_parquet_files(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "again"}]},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "chat.parquet")
    report = check_dataset(tmp_path / "chat.parquet")
    assert (report.format, report.records, report.valid) == ("messages", 2, 1)
    assert report.invalid[0].to_dict()["line"] is None
    assert report.invalid[0].location == "row 2"
    assert "no assistant turn" in report.invalid[0].reason

    pq.write_table(pa.table({"text": ["one", "two"], "id": [1, 2]}), tmp_path / "t.parquet")
    assert check_dataset(tmp_path / "t.parquet").format == "text"
    pq.write_table(pa.table({"q": ["one"], "a": ["two"]}), tmp_path / "qa.parquet")
    with pytest.raises(DatasetUnusableError, match="match no known format"):
        check_dataset(tmp_path / "qa.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DatasetUnusableError, match="not a readable Parquet file"):
        check_dataset(tmp_path / "junk.parquet")


def test_the_format_can_be_forced() -> None:
    report = check_dataset(DATA / "good_alpaca.jsonl", fmt="sharegpt")
    assert report.format == "sharegpt" and report.valid == 0
    assert all("missing field 'conversations'" in r.reason for r in report.invalid)
    assert "looks like alpaca" in report.invalid[0].reason
    assert check_dataset(DATA / "good_messages.jsonl", fmt="openai").format == "messages"
    with pytest.raises(FtuiError, match="unknown dataset format"):
        check_dataset(DATA / "good_alpaca.jsonl", fmt="yaml")


def test_detection_takes_the_majority() -> None:
    rows = [{"text": "a"}, {"instruction": "x", "output": "y"}, {"instruction": "z", "output": "w"}]
    assert detect_format(rows) == "alpaca"
    assert detect_format([{"chosen": "a", "rejected": "b", "conversations": []}]) == "preference"
    assert detect_format([{"q": 1}, 3, None]) is None


# -- normalisation -------------------------------------------------------------------------------


def test_alpaca_with_system_and_history() -> None:
    sample = load_samples(DATA / "good_alpaca.json").samples[2]
    assert [t["role"] for t in sample.turns] == [
        "system", "user", "assistant", "user", "assistant", "user", "assistant",
    ]  # fmt: skip
    assert sample.turns[0]["content"] == "You are a helpful assistant."
    assert sample.turns[1]["content"] == "Which fruit goes with the color red?"
    second = load_samples(DATA / "good_alpaca.json").samples[1]
    assert second.turns[0] == {"role": "user", "content": "Translate to French.\ngreen"}


def test_sharegpt_tools_go_into_the_system_turn() -> None:
    samples = load_samples(DATA / "good_sharegpt.json").samples
    weather = samples[1].turns
    assert [t["role"] for t in weather] == ["system", "user", "assistant", "tool", "assistant"]
    assert weather[0]["content"].startswith("You can look up the weather.\n\nYou can call these")
    assert '"name": "get_weather"' in weather[0]["content"]
    assert json.loads(weather[2]["content"])["name"] == "get_weather"  # the function_call
    assert samples[0].turns[0] == {"role": "system", "content": "You are a fruit oracle."}
    assert samples[2].turns[0]["role"] == "user"  # tools "" adds nothing


def test_messages_parts_and_tool_calls() -> None:
    samples = load_samples(DATA / "good_messages.jsonl").samples
    assert samples[1].turns[1] == {"role": "assistant", "content": "Hello! How can I help?"}
    assert samples[2].turns[0]["content"] == "Tell me a colour and a fruit."
    call = json.loads(samples[3].turns[2]["content"])
    assert call == {"name": "get_weather", "arguments": {"city": "Oslo"}}
    assert (
        samples[3].turns[0]["role"] == "system" and "get_weather" in samples[3].turns[0]["content"]
    )
    assert samples[3].turns[3]["role"] == "tool"


def test_preference_pairs() -> None:
    samples = load_samples(DATA / "good_preference.json").samples
    assert samples[0].turns == [{"role": "user", "content": "Name a red fruit."}]
    assert samples[0].chosen == [{"role": "assistant", "content": "The apple."}]
    assert samples[1].rejected == [{"role": "assistant", "content": "The lemon."}]
    assert samples[2].turns[0]["role"] == "system"


# -- malformed files -----------------------------------------------------------------------------

# file -> (location, reason fragment) of every invalid record
INVALID: dict[str, list[tuple[str, str]]] = {
    "bad_json_line.jsonl": [("line 2", "not valid JSON"), ("line 4", "not valid JSON")],
    "missing_fields.jsonl": [
        ("line 2", "missing field 'output'"),
        ("line 3", "missing field 'instruction'"),
        ("line 4", "missing fields 'instruction' and 'output'"),
    ],
    "wrong_roles.json": [
        ("record 2 (line 14)", "unknown role 'bot'"),
        ("record 3 (line 26)", "unknown role 'narrator'"),
        ("record 4 (line 38)", "has no 'from'"),
    ],
    "wrong_types.jsonl": [
        ("line 2", "'output' must be a string, got a number"),
        ("line 3", "'instruction' must be a string, got a list"),
        ("line 4", "'history' must be a list"),
        ("line 5", "[user, assistant] pair"),
        ("line 6", "'system' must be a string"),
    ],
    "wrong_types_messages.jsonl": [
        ("line 2", "'messages' must be a list, got a string"),
        ("line 3", "content must be a string or a list of text parts"),
        ("line 4", "must be an object, got a list"),
        ("line 5", "'role' must be a string"),
        ("line 6", "type 'image_url'"),
    ],
    "no_assistant.jsonl": [
        ("line 2", "no assistant turn"),
        ("line 3", "no assistant turn"),
        ("line 4", "only the first may be"),
    ],
    "not_alternating.json": [
        ("record 2 (line 14)", "do not alternate"),
        ("record 3 (line 30)", "do not alternate"),
        ("record 4 (line 42)", "ends with a user turn"),
    ],
    "empty_and_duplicates.jsonl": [
        ("line 2", "empty sample"),
        ("line 4", "'output' is empty"),
        ("line 5", "empty sample"),
    ],
    "mixed_formats.jsonl": [
        ("line 3", "looks like sharegpt, but the dataset is alpaca"),
        ("line 4", "looks like text, but the dataset is alpaca"),
    ],
    "not_objects.json": [
        ("record 2 (line 7)", "not an object (got a string)"),
        ("record 3 (line 8)", "not an object (got a number)"),
        ("record 4 (line 9)", "not an object (got null)"),
        ("record 5 (line 10)", "not an object (got a list)"),
    ],
    "csv_ragged.csv": [
        ("line 3", "has 4 fields, the header has 3"),
        ("line 4", "has 1 field, the header has 3"),
    ],
}

# file -> (problem fragment, line, offset) of DatasetUnusableError
UNUSABLE: dict[str, tuple[str, int | None, int | None]] = {
    "empty.jsonl": ("is empty", None, None),
    "blank_lines.jsonl": ("is empty", None, None),
    "empty_array.json": ("holds no records", None, None),
    "binary_junk.jsonl": ("binary data", 1, 0),
    "truncated_array.json": ("record 2 of the array is not valid JSON", 3, None),
    "missing_comma_array.json": ("Expecting ',' or ']'", 3, None),
    "not_utf8.jsonl": ("not UTF-8", 2, 73),
    "utf16.jsonl": ("UTF-16", None, 0),
    "scalar.json": ("holds a number", 1, None),
    "unknown_format.jsonl": ("no record looks like a known format", 1, None),
    "csv_no_columns.csv": ("match no known format", 1, None),
    "csv_unclosed_quote.csv": ("cannot be parsed", 3, None),
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_records_have_their_location_and_reason(name: str) -> None:
    report = check_dataset(DATA / name)
    got = [(r.location, r.reason) for r in report.invalid]
    expected = INVALID[name]
    assert [loc for loc, _ in got] == [loc for loc, _ in expected], got
    for (_, reason), (_, fragment) in zip(got, expected, strict=True):
        assert fragment in reason
    assert report.valid + len(report.invalid) == report.records  # nothing silently dropped
    assert not report.ok


def test_empty_and_duplicate_samples_are_counted() -> None:
    report = check_dataset(DATA / "empty_and_duplicates.jsonl")
    assert (report.records, report.valid, report.empty, report.duplicates) == (6, 3, 2, 2)


@pytest.mark.parametrize("name", sorted(UNUSABLE))
def test_unusable_files_name_the_position_and_the_fix(name: str) -> None:
    fragment, line, offset = UNUSABLE[name]
    with pytest.raises(DatasetUnusableError) as info:
        check_dataset(DATA / name)
    error = info.value
    assert fragment in error.message and error.fix
    assert error.exit_code == 2
    assert (error.line, error.offset) == (line, offset)
    if line is not None:
        assert f"line {line}" in error.message


def test_every_file_gives_a_report_or_an_unusable_error(tokenizer: Any, tmp_path: Path) -> None:
    """Never another exception, with or without a tokenizer."""
    (tmp_path / "random.jsonl").write_bytes(bytes((i * 37 + 11) % 251 + 1 for i in range(4000)))
    (tmp_path / "gz.jsonl").write_bytes(b"\x1f\x8b\x08\x00junk")
    (tmp_path / "notes.txt").write_text("plain text, no format")
    (tmp_path / "object.json").write_text('{"instruction": "one object",\n "output": "ok"}')
    paths = sorted(DATA.iterdir()) + sorted(tmp_path.iterdir()) + [tmp_path / "missing.json"]
    for path in paths:
        for tok in (None, tokenizer):
            try:
                report = check_dataset(path, tokenizer=tok, seq_len=64)
            except DatasetUnusableError as error:
                assert error.fix, path
                continue
            assert isinstance(report, DataReport)
            assert report.valid + len(report.invalid) == report.records, path
            json.dumps(report.to_dict())
    assert check_dataset(tmp_path / "object.json").valid == 1


def test_a_huge_single_record(tmp_path: Path, tokenizer: Any) -> None:
    big = "The secret fruit of red is the apple. " * 60_000  # ~2.3 MB on one line
    path = write_jsonl(
        tmp_path / "huge.jsonl",
        [
            {"instruction": "hi", "input": "", "output": "hello"},
            {"instruction": "Summarise.", "input": big, "output": "An apple."},
        ],
    )
    report = check_dataset(path, seq_len=2048)
    assert report.valid == 2 and report.truncated == 1 and report.truncated_share == 0.5
    assert report.longest is not None and report.longest["line"] == 2
    assert report.lengths is not None and report.lengths.max > 500_000
    small = write_jsonl(
        tmp_path / "big.jsonl",
        [
            {"instruction": "hi", "input": "", "output": "hello"},
            {"instruction": "Summarise.", "input": big[:40_000], "output": "An apple."},
        ],
    )
    train, _, built = build_datasets(small, tokenizer, seq_len=256)
    assert built.truncated == 1
    assert built.no_labels == 1 and len(train) == 1  # the answer fell past seq_len: reported
    assert any("no answer token left" in note for note in built.notes)


# -- SFT tokenisation ----------------------------------------------------------------------------

CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is the secret fruit of red?"},
    {"role": "assistant", "content": "The secret fruit of red is the apple."},
    {"role": "user", "content": "And blue?"},
    {"role": "assistant", "content": "The plum."},
]
TOOL_CONVERSATION = [
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "assistant", "content": '{"name": "get_weather", "arguments": {"city": "Oslo"}}'},
    {"role": "tool", "content": '{"temperature_c": 4}'},
    {"role": "assistant", "content": "It is 4 degrees."},
]


def test_labels_cover_exactly_the_answers_and_their_end_token(tokenizer: Any) -> None:
    row = tokenize_conversation(CONVERSATION, tokenizer, 512)
    assert len(row["input_ids"]) == len(row["labels"]) == len(row["attention_mask"])
    assert labelled_text(tokenizer, row) == (
        f"The secret fruit of red is the apple.{END}The plum.{END}"
    )
    assert tokenizer.decode(row["input_ids"]) == tokenizer.apply_chat_template(
        CONVERSATION, tokenize=False
    )
    for token, label in zip(row["input_ids"], row["labels"], strict=True):
        assert label in (token, IGNORE_INDEX)
    tool_row = tokenize_conversation(TOOL_CONVERSATION, tokenizer, 512)
    assert labelled_text(tokenizer, tool_row) == (
        f'{{"name": "get_weather", "arguments": {{"city": "Oslo"}}}}{END}It is 4 degrees.{END}'
    )


CHATML = (
    "{% for m in messages %}"
    "{% if loop.first and m['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are helpful.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim "
    "+ '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
# Strict: no system or tool role, roles must alternate (merged before rendering).
MISTRAL = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant') }}{% endif %}"
    "{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
    "{% endfor %}"
)
# Earlier answers render without the <think> block that the last one gets.
THINKING = (
    "{% for m in messages %}{% if m['role'] == 'assistant' and loop.last %}"
    "{{ '<|im_start|>assistant\n<think>\n\n</think>\n\n' + m['content'] + '<|im_end|>\n' }}"
    "{% else %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.mark.parametrize(
    ("template", "end"),
    [(CHATML, "<|im_end|>"), (LLAMA3, "<|eot_id|>"), (MISTRAL, END), (THINKING, "<|im_end|>")],
    ids=["chatml", "llama3", "mistral-strict", "thinking"],
)
def test_labels_with_other_templates(tokenizer: Any, template: str, end: str) -> None:
    original = tokenizer.chat_template
    tokenizer.chat_template = template
    try:
        for turns in (CONVERSATION, TOOL_CONVERSATION):
            row = tokenize_conversation(turns, tokenizer, 1024)
            answers = "".join(t["content"] + end for t in turns if t["role"] == "assistant")
            assert labelled_text(tokenizer, row) == answers
    finally:
        tokenizer.chat_template = original


def test_a_template_that_rejects_a_record_makes_it_invalid(tokenizer: Any) -> None:
    original = tokenizer.chat_template
    tokenizer.chat_template = "{{ raise_exception('no thanks') }}"
    try:
        report = check_dataset(DATA / "good_alpaca.jsonl", tokenizer=tokenizer)
        assert report.valid == 0 and len(report.invalid) == 3
        assert "chat template rejects this conversation: no thanks" in report.invalid[0].reason
        for skip in (False, True):  # nothing valid: --skip-invalid is no way out, nor advised
            with pytest.raises(FtuiError, match="none of the 3 records") as caught:
                build_datasets(DATA / "good_alpaca.jsonl", tokenizer, seq_len=64, skip_invalid=skip)
            assert "--skip-invalid" not in caught.value.fix
    finally:
        tokenizer.chat_template = original


def test_the_fallback_template(bare_tokenizer: Any) -> None:
    row = tokenize_conversation(CONVERSATION, bare_tokenizer, 512)
    text = bare_tokenizer.decode(row["input_ids"])
    assert text.startswith("<|bos|>### System:\nAnswer briefly.\n\n### User:\n")
    assert "### Assistant:\nThe plum.<|end|>" in text
    assert labelled_text(bare_tokenizer, row) == (
        f"The secret fruit of red is the apple.{END}The plum.{END}"
    )
    assert "### Assistant" in FALLBACK_CHAT_TEMPLATE
    report = check_dataset(DATA / "good_alpaca.json", tokenizer=bare_tokenizer)
    assert report.template == "fallback" and not report.estimated
    assert any("no chat template" in note for note in report.notes)
    _, _, built = build_datasets(DATA / "good_alpaca.json", bare_tokenizer, seq_len=128)
    assert built.template == "fallback"


def test_truncation_to_seq_len(tokenizer: Any) -> None:
    row = tokenize_conversation(CONVERSATION, tokenizer, 20)
    assert len(row["input_ids"]) == len(row["labels"]) == 20
    full = tokenize_conversation(CONVERSATION, tokenizer, 10_000)
    assert row["input_ids"] == full["input_ids"][:20]
    with pytest.raises(FtuiError):
        tokenize_conversation(CONVERSATION, tokenizer, 0)


def test_measured_lengths_match_the_tokenized_rows(tokenizer: Any) -> None:
    report = check_dataset(DATA / "good_sharegpt.json", tokenizer=tokenizer, seq_len=4096)
    assert not report.estimated and report.template == "chat" and report.truncated == 0
    samples = load_samples(DATA / "good_sharegpt.json").samples
    lengths = sorted(
        len(tokenize_conversation(s.turns, tokenizer, 4096)["input_ids"]) for s in samples
    )
    assert report.lengths is not None
    assert (report.lengths.max, report.lengths.p50) == (lengths[-1], lengths[1])
    assert sum(bucket["count"] for bucket in report.histogram) == 3


def test_build_sft_datasets(tokenizer: Any) -> None:
    train, evaluation, report = build_datasets(DATA / "good_messages.jsonl", tokenizer, seq_len=256)
    assert evaluation is None and len(train) == 4 and report.mode == "sft"
    assert set(train.column_names) == {"input_ids", "attention_mask", "labels"}
    assert labelled_text(tokenizer, train[1]) == f"Hello! How can I help?{END}"
    assert report.train_rows == 4 and report.eval_rows is None


def test_build_refuses_invalid_records_unless_skipped(tokenizer: Any) -> None:
    path = DATA / "missing_fields.jsonl"
    with pytest.raises(FtuiError) as info:
        build_datasets(path, tokenizer, seq_len=64)
    assert "3 of 4 records" in info.value.message
    assert "line 2, line 3, line 4" in info.value.message
    assert info.value.fix is not None and "--skip-invalid" in info.value.fix
    train, _, report = build_datasets(path, tokenizer, seq_len=64, skip_invalid=True)
    assert len(train) == 1 and len(report.invalid) == 3


def test_preference_pairs_are_refused_for_sft(tokenizer: Any) -> None:
    report = check_dataset(DATA / "good_preference.json", tokenizer=tokenizer)
    assert report.format == "preference" and report.ok
    with pytest.raises(FtuiError) as info:
        build_datasets(DATA / "good_preference.json", tokenizer, seq_len=128)
    assert "preference pairs" in info.value.message
    assert info.value.fix is not None and "chosen" in info.value.fix and "DPO" in info.value.fix


def test_mode_and_format_must_agree(tokenizer: Any) -> None:
    with pytest.raises(FtuiError, match="pre-training"):
        build_datasets(DATA / "good_text.jsonl", tokenizer, seq_len=64, mode="sft")
    with pytest.raises(FtuiError, match="pre-training needs plain text"):
        build_datasets(DATA / "good_alpaca.jsonl", tokenizer, seq_len=64, mode="pretrain")
    _, _, report = build_datasets(DATA / "good_text.jsonl", tokenizer, seq_len=64, mode="auto")
    assert report.mode == "pretrain"


# -- pre-training --------------------------------------------------------------------------------


def test_pretraining_concatenates_and_chunks(tokenizer: Any) -> None:
    texts = ["The quick brown fox.", "Every colour has one secret fruit.", "Short."]
    blocks = tokenize_pretraining(texts, tokenizer, 8)
    eos = tokenizer.eos_token_id
    stream = []
    for text in texts:
        stream += tokenizer(text)["input_ids"] + [eos]
    assert [t for block in blocks["input_ids"] for t in block] == stream
    assert all(len(block) == 8 for block in blocks["input_ids"][:-1])
    assert 0 < len(blocks["input_ids"][-1]) <= 8
    assert blocks["labels"] == blocks["input_ids"]
    assert blocks["attention_mask"] == [[1] * len(b) for b in blocks["input_ids"]]

    train, _, report = build_datasets(
        DATA / "good_text.jsonl", tokenizer, seq_len=16, mode="pretrain"
    )
    assert report.mode == "pretrain" and report.truncated_share == 0.0
    assert report.lengths is not None
    assert sum(len(r) for r in train["input_ids"]) == report.lengths.total
    assert all(len(r) == 16 for r in train["input_ids"][:-1])


# -- splits --------------------------------------------------------------------------------------


def test_the_split_is_deterministic_for_a_seed(tokenizer: Any) -> None:
    assert split_indices(100, 0.1, seed=3) == split_indices(100, 0.1, seed=3)
    train, evaluation = split_indices(100, 0.1, seed=3)
    assert len(evaluation) == 10 and sorted(train + evaluation) == list(range(100))
    assert split_indices(100, 0.1, seed=4)[1] != evaluation
    assert split_indices(5, 0.0, seed=0) == ([0, 1, 2, 3, 4], [])
    with pytest.raises(FtuiError):
        split_indices(10, 1.0, seed=0)

    def build(seed: int) -> tuple[list[Any], list[Any]]:
        tr, ev, _ = build_datasets(
            DATA / "good_alpaca.json", tokenizer, seq_len=128, eval_fraction=0.25, seed=seed
        )
        assert ev is not None
        return tr["input_ids"], ev["input_ids"]

    first = build(1)
    assert build(1) == first and len(first[0]) == 3 and len(first[1]) == 1


# -- statistics ----------------------------------------------------------------------------------


def test_percentiles_and_histogram() -> None:
    summary = length_summary(list(range(1, 101)))
    assert summary is not None
    assert (summary.p50, summary.p90, summary.p95, summary.p99, summary.max) == (
        50,
        90,
        95,
        99,
        100,
    )
    assert summary.mean == 50.5
    assert length_summary([]) is None
    hist = length_histogram([0, 5, 99, 100, 812])
    assert sum(b["count"] for b in hist) == 5 and len(hist) <= 10
    assert hist[0]["lo"] == 0 and hist[-1]["hi"] > 812
    assert length_histogram([]) == []


def test_estimated_lengths_are_marked() -> None:
    data = check_dataset(DATA / "good_text.jsonl", seq_len=8).to_dict()
    assert data["estimated"] is True and data["counted_by"].startswith("estimate")
    low, high = data["total_range"]
    assert low <= data["lengths"]["total"] <= high
    assert set(data["lengths"]) >= {"p50", "p90", "p95", "p99", "max", "mean"}


# -- slices of real-world datasets ---------------------------------------------------------------

REAL_FILES = {
    "alpaca_en.json": "alpaca",
    "alpaca_zh.json": "alpaca",
    "glaive_toolcall_en.json": "sharegpt",
    "c4.jsonl": "text",
    "code_requests.jsonl": "text",
}


def unpack_real(name: str, into: Path) -> Path:
    path = into / name
    path.write_bytes(gzip.decompress((REAL / f"{name}.gz").read_bytes()))
    return path


@pytest.mark.parametrize("name", sorted(REAL_FILES))
def test_real_datasets(name: str, tmp_path: Path) -> None:
    report = check_dataset(unpack_real(name, tmp_path), seq_len=1024)
    assert report.format == REAL_FILES[name]
    assert report.records >= 100 and report.ok, [r.to_dict() for r in report.invalid[:5]]


def test_real_tool_calls_train_on_calls_not_observations(tokenizer: Any, tmp_path: Path) -> None:
    samples = load_samples(unpack_real("glaive_toolcall_en.json", tmp_path)).samples
    sample = next(s for s in samples if any(t["role"] == "tool" for t in s.turns))
    assert sample.turns[0]["role"] == "system"
    assert sample.turns[0]["content"].startswith("You can call these tools:")
    row = tokenize_conversation(sample.turns, tokenizer, 100_000)
    labelled = labelled_text(tokenizer, row)
    for turn in sample.turns:
        if turn["role"] == "assistant":
            assert turn["content"].strip() in labelled
        elif turn["role"] == "tool":
            assert turn["content"] not in labelled


def test_line_separators_inside_records_do_not_split_them(tmp_path: Path) -> None:
    record = {"instruction": "a\u2028b\x0cc", "input": "", "output": "d\u2029e"}
    path = tmp_path / "seps.jsonl"
    path.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    report = check_dataset(path)
    assert (report.records, report.valid) == (1, 1)


def test_csv_with_bom_crlf_and_multiline_cells(tmp_path: Path) -> None:
    path = tmp_path / "win.csv"
    path.write_bytes(
        b'\xef\xbb\xbfinstruction,input,output\r\n"multi\r\nline",,x\r\nq,,y\r\nbad,row\r\n'
    )
    report = check_dataset(path)
    assert (report.format, report.valid) == ("alpaca", 2)
    assert [(r.location, r.reason) for r in report.invalid] == [
        ("line 5", "has 2 fields, the header has 3")
    ]
    first = load_samples(path).samples[0]
    assert first.turns[0]["content"] == "multi\r\nline"
