"""Token counts without a tokenizer: a script-aware estimate from character classes.

BPE vocabularies spend tokens very differently on different scripts: a common English word is
one token whatever its length, a Han character most of one, a digit one (Qwen) or a third
(DeepSeek). One characters-per-token ratio for every language under-counts Chinese text ~1.7x and
over-counts English ~1.3x, so the estimate counts classes of characters separately, each with
its own ratio:

- ``cjk``: Han, kana and hangul letters (tokens per character);
- other letters (Latin, Cyrillic, Greek, Arabic, ...): tokens per ``words`` (runs of letters)
  plus a little per letter in them (``letters``: long, rare words split into more pieces);
- ``digits``;
- ``breaks``: runs of whitespace other than the single spaces between words (line breaks,
  blank lines, indentation: about one token per run in byte-level BPE; a single space is merged
  into the next word and costs nothing);
- ``punct``: everything else (ASCII and full-width punctuation, symbols, emoji).

The ratios (`CENTRAL`) were fitted with `benchmarks/token_estimate.py` to two real tokenizers
(Qwen2.5's and DeepSeek-V4's BPE) on real chat, tool-call, web and code data; `LOW` and `HIGH`
take each ratio's smaller and larger value of the two tokenizers' own fits and give the
estimate's range.
docs/data.md lists the ratios, their sources and the measured errors.

A chat conversation adds the template's markers per turn (`TEMPLATE_TOKENS`: ChatML's
``<|im_start|>role\\n ... <|im_end|>\\n`` is 5, DeepSeek's 2); a pre-training document adds its
EOS.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.data.records import Sample

# Han (CJK unified ideographs, extensions, compatibility), kana (hiragana, katakana, half-width
# katakana) and hangul (jamo, compatibility jamo, syllables).
_CJK = re.compile(
    "[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
    "\u3041-\u309f\u30a0-\u30fa\u30fc-\u30ff\u31f0-\u31ff\uff66-\uff9d"
    "\u1100-\u11ff\u3131-\u318e\uac00-\ud7a3]"
)
_LETTER = re.compile(r"[^\W\d_]")
_WORD = re.compile(r"[^\W\d_]+")
_DIGIT = re.compile(r"\d")
_SPACE = re.compile(r"\s")
# Whitespace that costs a token of its own: a run of two or more whitespace characters (an
# indentation, a blank line) or a lone tab or line break; a single space joins the next word.
_BREAK = re.compile(r"\s{2,}|[^\S ]")

TEMPLATE_TOKENS = 4  # per chat turn: ChatML, Llama 3 and Gemma markers take 5, DeepSeek's 2
DOCUMENT_TOKENS = 1  # a pre-training document's EOS


@dataclass(frozen=True)
class CharClasses:
    """How many characters of each class a text holds (and its words of non-CJK letters)."""

    cjk: int = 0
    letters: int = 0
    words: int = 0
    digits: int = 0
    breaks: int = 0
    punct: int = 0

    def __add__(self, other: CharClasses) -> CharClasses:
        return CharClasses(*(a + b for a, b in zip(self.as_tuple(), other.as_tuple(), strict=True)))

    def as_tuple(self) -> tuple[int, ...]:
        return tuple(getattr(self, name) for name in CLASS_NAMES)


CLASS_NAMES = ("cjk", "letters", "words", "digits", "breaks", "punct")


def char_classes(text: str) -> CharClasses:
    """Count each class of characters in `text` (regex passes: C speed on long texts)."""
    if not text:
        return CharClasses()
    cjk = _CJK.subn("", text)[1]
    letters = _LETTER.subn("", text)[1] - cjk
    words = _WORD.subn("", _CJK.sub(" ", text))[1] if letters else 0
    digits = _DIGIT.subn("", text)[1]
    spaces = _SPACE.subn("", text)[1]
    breaks = _BREAK.subn("", text)[1]
    punct = len(text) - cjk - letters - digits - spaces
    return CharClasses(cjk, letters, words, digits, breaks, punct)


@dataclass(frozen=True)
class TokenRatios:
    """Tokens per character of each class (per word for `words`), per chat turn for the
    template's markers and per pre-training document for its EOS / BOS."""

    cjk: float
    letters: float
    words: float
    digits: float
    breaks: float
    punct: float
    turn: float = TEMPLATE_TOKENS
    document: float = DOCUMENT_TOKENS

    def text_tokens(self, classes: CharClasses) -> float:
        return sum(
            float(getattr(self, name)) * count
            for name, count in zip(CLASS_NAMES, classes.as_tuple(), strict=True)
        )

    def to_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in (*CLASS_NAMES, "turn", "document")}


# Fitted by benchmarks/token_estimate.py (docs/data.md gives the data and the errors). CENTRAL:
# both tokenizers together; LOW / HIGH: each ratio's smaller / larger value of the two
# tokenizers' own fits, with their templates' overheads (DeepSeek's 2 tokens per turn and a
# BOS + EOS per document; ChatML's 5 per turn and an EOS).
CENTRAL = TokenRatios(cjk=0.568, letters=0.025, words=0.974, digits=0.561, breaks=1.421, punct=0.61)
LOW = TokenRatios(
    cjk=0.539, letters=0.021, words=0.957, digits=0.368, breaks=1.222, punct=0.579, turn=2
)
HIGH = TokenRatios(
    cjk=0.597,
    letters=0.027,
    words=0.985,
    digits=1.069,
    breaks=1.695,
    punct=0.62,
    turn=5,
    document=2,
)


def estimate_tokens(texts: Iterable[str], *, turns: int = 0, ratios: TokenRatios = CENTRAL) -> int:
    """Tokens of a sample: its texts by character class, plus the template's markers per chat
    turn (`turns` > 0) or a plain document's EOS (`turns` == 0)."""
    classes = CharClasses()
    for text in texts:
        classes = classes + char_classes(text)
    overhead = ratios.turn * turns if turns > 0 else ratios.document
    return max(1, round(ratios.text_tokens(classes) + overhead))


def estimate_sample(
    sample: Sample, *, ratios: TokenRatios = CENTRAL, every_sequence: bool = False
) -> int:
    """Estimated tokens of the longest sequence a sample trains on (a preference pair: the
    prompt with the longer of chosen/rejected), or with `every_sequence` of all the sequences
    it puts through the model (a pair: prompt + chosen and prompt + rejected)."""
    if sample.text is not None:
        return estimate_tokens([sample.text], ratios=ratios)
    answers = [sample.chosen, sample.rejected] if sample.chosen is not None else [[]]
    counts = [
        estimate_tokens(
            [t["content"] for t in [*sample.turns, *(answer or [])]],
            turns=len(sample.turns) + len(answer or []),
            ratios=ratios,
        )
        for answer in answers
    ]
    return sum(counts) if every_sequence else max(counts)


def local_tokenizer_file(model: str) -> Path | None:
    """The model's own tokenizer.json when it is on this machine (its local directory, or its
    snapshot in the HF cache), else None. Never touches the network."""
    from engine.models import resolve_model
    from engine.paths import hf_hub_cache

    try:
        arch = resolve_model(model)
    except Exception:  # an unknown model is reported by whoever plans it
        return None
    candidates: list[Path] = []
    if arch.path is not None:
        candidates.append(Path(arch.path) / "tokenizer.json")
    if arch.hf_id is not None:
        snapshots = hf_hub_cache() / f"models--{arch.hf_id.replace('/', '--')}" / "snapshots"
        try:
            found = sorted(snapshots.glob("*/tokenizer.json"), key=lambda p: p.stat().st_mtime)
        except OSError:
            found = []
        candidates.extend(reversed(found))
    return next((c for c in candidates if c.is_file()), None)


def tokenizer_counter(path: Path) -> Callable[[Sample, bool], int] | None:
    """Token counts of samples with a tokenizer.json (the `tokenizers` library: fast, no
    transformers import): the texts' own tokens plus the template's markers as estimated
    (`TEMPLATE_TOKENS` per turn, or `DOCUMENT_TOKENS`). The counter's second argument is
    `every_sequence`, as for `estimate_sample`. None when it cannot be loaded."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return None
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception:  # a tokenizer.json this tokenizers version cannot read
        return None

    def count(sample: Sample, every_sequence: bool = False) -> int:
        def tokens(turns: list[dict[str, str]]) -> int:
            texts = [t["content"] for t in turns]
            encoded = tokenizer.encode_batch(texts, add_special_tokens=False) if texts else []
            return sum(len(e.ids) for e in encoded) + TEMPLATE_TOKENS * len(turns)

        if sample.text is not None:
            ids = tokenizer.encode(sample.text, add_special_tokens=False).ids
            return len(ids) + DOCUMENT_TOKENS
        answers = [sample.chosen, sample.rejected] if sample.chosen is not None else [[]]
        counts = [tokens([*sample.turns, *(answer or [])]) for answer in answers]
        return sum(counts) if every_sequence else max(counts)

    return count
