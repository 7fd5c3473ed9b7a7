"""Training data: read, recognise, validate, normalise and tokenise fine-tuning datasets.

Files: a JSON array, JSONL, CSV (or TSV) and Parquet, or a folder of such files (read in sorted
order, recursively; hidden files are skipped). Formats, recognised per record by their fields,
the majority deciding (or forced with `fmt=`):

- ``alpaca``: ``instruction`` / ``input`` / ``output``, optional ``system`` and ``history``
  (a list of ``[user, assistant]`` pairs, oldest first).
- ``sharegpt``: ``conversations``, a list of ``{"from", "value"}`` turns. Roles human/user,
  gpt/assistant, system (first turn only), ``function_call`` (an assistant turn) and
  ``observation`` (a tool turn); optional ``system`` and ``tools`` (a JSON string or a list).
  Turns must alternate: user or observation, then gpt or function_call, ending on the latter.
- ``messages`` (OpenAI / ChatML): ``messages``, a list of ``{"role", "content"}``; content is a
  string or a list of text parts (``{"type": "text", "text" | "value": ...}``); extra keys such
  as ``loss_weight`` or ``name`` are tolerated; an assistant's ``tool_calls`` become its text.
- ``text``: ``{"text": ...}`` documents for continued pre-training.
- ``preference``: ``chosen`` / ``rejected`` with the prompt in ``conversations``, ``messages``,
  ``prompt`` or ``instruction``. Recognised, validated and measured; SFT on them is refused.

Every chat record becomes a list of ``{"role": system|user|assistant|tool, "content": str}``
turns. Tool definitions (a record's ``tools``) are appended to the system turn's text (one is
made when the record has none) as "You can call these tools: <JSON>": the same text for every
chat template, including the fallback, and nothing lost on templates that ignore a ``tools``
argument.

Validation never raises on a bad record: each one gets its location (1-based line for JSONL and
CSV, record index plus its line for a JSON array, the row for Parquet) and a reason, and counts as
invalid. A file that cannot be read as a whole (empty, binary, not UTF-8, a truncated JSON array,
a CSV without the columns of any format) raises `DatasetUnusableError` naming the position.

SFT tokenisation renders each conversation with the tokenizer's chat template (or, without one,
`FALLBACK_CHAT_TEMPLATE`: "### System:/### User:/### Assistant:" blocks, each answer closed with
the EOS token) and labels only the assistant answers and their end-of-turn token. The spans come
from rendering prefix by prefix (the conversation up to each answer with the generation prompt,
and through the answer) and diffing the texts, so any template works without `{% generation %}`.

This module is headless and cheap to import: transformers, datasets and pyarrow load only inside
the functions that need them.
"""

from __future__ import annotations

from engine.data.build import (
    build_datasets,
    split_indices,
)
from engine.data.encoding import (
    EncodedConversation,
    assistant_spans,
    encode_conversation,
    tokenize_conversation,
    tokenize_pretraining,
)
from engine.data.formats import (
    LoadedDataset,
    classify_record,
    detect_format,
    load_samples,
    normalize_record,
)
from engine.data.readers import (
    dataset_files,
    read_records,
)
from engine.data.records import (
    CSV_SUFFIXES,
    FALLBACK_CHAT_TEMPLATE,
    FORMAT_ALIASES,
    FORMATS,
    HISTOGRAM_BUCKETS,
    IGNORE_INDEX,
    JSON_SUFFIXES,
    MODES,
    PARQUET_SUFFIXES,
    ROLES,
    SUPPORTED_SUFFIXES,
    TOOLS_PREAMBLE,
    DataReport,
    DatasetUnusableError,
    InvalidRecord,
    InvalidRecordError,
    LengthSummary,
    RawRecord,
    Sample,
    Turn,
)
from engine.data.report import (
    check_dataset,
    length_histogram,
    length_summary,
    load_tokenizer,
)

__all__ = [
    "CSV_SUFFIXES",
    "FALLBACK_CHAT_TEMPLATE",
    "FORMATS",
    "FORMAT_ALIASES",
    "HISTOGRAM_BUCKETS",
    "IGNORE_INDEX",
    "JSON_SUFFIXES",
    "MODES",
    "PARQUET_SUFFIXES",
    "ROLES",
    "SUPPORTED_SUFFIXES",
    "TOOLS_PREAMBLE",
    "DataReport",
    "DatasetUnusableError",
    "EncodedConversation",
    "InvalidRecord",
    "InvalidRecordError",
    "LengthSummary",
    "LoadedDataset",
    "RawRecord",
    "Sample",
    "Turn",
    "assistant_spans",
    "build_datasets",
    "check_dataset",
    "classify_record",
    "dataset_files",
    "detect_format",
    "encode_conversation",
    "length_histogram",
    "length_summary",
    "load_samples",
    "load_tokenizer",
    "normalize_record",
    "read_records",
    "split_indices",
    "tokenize_conversation",
    "tokenize_pretraining",
]
