"""Token-length statistics of a dataset, cheap enough for the planner's start-up path.

The planner must not import transformers: lengths come from the script-aware estimate of
`engine.data.tokens` (character classes, fitted to real tokenizers), with a low-high range for
the total. `ftui data check --model M` measures with the model's own tokenizer and template.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.data.formats import load_samples
from engine.data.tokens import (
    HIGH,
    LOW,
    TEMPLATE_TOKENS,
    estimate_sample,
    local_tokenizer_file,
    tokenizer_counter,
)
from engine.errors import FtuiError

COUNTED_BY = "estimate from character classes (engine.data.tokens)"


@dataclass(frozen=True)
class LengthStats:
    records: int
    total_tokens: int  # every sequence trained: both sides of a preference pair
    p50: int
    p90: int
    p99: int
    max: int
    estimated: bool  # True when lengths come from characters, not a tokenizer
    total_low: int | None = None  # the estimate's range (None when measured)
    total_high: int | None = None
    counted_by: str = COUNTED_BY

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "total_tokens": self.total_tokens,
            "total_tokens_range": (
                None if self.total_low is None else [self.total_low, self.total_high]
            ),
            "p50": self.p50,
            "p90": self.p90,
            "p99": self.p99,
            "max": self.max,
            "estimated": self.estimated,
            "counted_by": self.counted_by,
        }


def _length_stats(lengths: list[int], total: int, **fields: Any) -> LengthStats:
    """Count and percentiles of per-record token lengths (at least one record), and the total
    tokens trained (`total`: a preference pair's both sequences)."""
    ordered = sorted(lengths)
    return LengthStats(
        records=len(lengths),
        total_tokens=total,
        p50=_percentile(ordered, 0.5),
        p90=_percentile(ordered, 0.9),
        p99=_percentile(ordered, 0.99),
        max=ordered[-1],
        **fields,
    )


def _percentile(ordered: list[int], q: float) -> int:
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def estimate_lengths(path: Path, *, model: str | None = None) -> tuple[LengthStats, list[int]]:
    """Token lengths of a dataset's valid records (any format `ftui data check` reads), in
    record order: counted with `model`'s own tokenizer.json when it is on this machine (the
    template's markers still estimated), else estimated from character classes.

    A record's length is its longest sequence (what the sequence length must hold); the total
    counts every sequence the model trains on, so a preference pair's prompt + chosen and
    prompt + rejected both count (the speed model's tokens/s counts both too)."""
    samples = load_samples(path).samples
    if not samples:
        raise FtuiError(
            f"dataset {path} has no valid records",
            f"run `ftui data check {path}` to see why",
        )
    tokenizer_file = local_tokenizer_file(model) if model else None
    count = tokenizer_counter(tokenizer_file) if tokenizer_file is not None else None
    if count is not None:
        lengths = [count(s, False) for s in samples]
        return _length_stats(
            lengths,
            sum(count(s, True) for s in samples),
            estimated=False,
            counted_by=f"{tokenizer_file} (+{TEMPLATE_TOKENS} per chat turn for the template)",
        ), lengths
    lengths = [estimate_sample(s) for s in samples]
    stats = _length_stats(
        lengths,
        sum(estimate_sample(s, every_sequence=True) for s in samples),
        estimated=True,
        total_low=sum(estimate_sample(s, ratios=LOW, every_sequence=True) for s in samples),
        total_high=sum(estimate_sample(s, ratios=HIGH, every_sequence=True) for s in samples),
    )
    return stats, lengths
