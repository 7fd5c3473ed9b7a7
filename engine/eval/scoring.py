"""Overlap scores of answers against references, from the libraries everyone cites:
ROUGE-L from Google's `rouge-score` (F-measure, Porter stemming), BLEU from `sacrebleu`
(sentence BLEU per answer, corpus BLEU per checkpoint, its default 13a tokenisation).
Exact match compares the stripped texts. Nothing here downloads anything."""

from __future__ import annotations

from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _rouge() -> Any:
    from rouge_score import rouge_scorer  # type: ignore[import-untyped]

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def exact_match(answer: str, reference: str) -> bool:
    return answer.strip() == reference.strip()


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F-measure in [0, 1]."""
    return float(_rouge().score(reference, answer)["rougeL"].fmeasure)


def sentence_bleu(answer: str, reference: str) -> float:
    """sacrebleu's sentence BLEU in [0, 100]."""
    import sacrebleu

    return float(sacrebleu.sentence_bleu(answer, [reference]).score)


def corpus_bleu(answers: list[str], references: list[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_bleu(answers, [references]).score)


def score_answer(answer: str, reference: str | None) -> dict[str, Any]:
    if reference is None:
        return {"exact_match": None, "rouge_l": None, "bleu": None}
    return {
        "exact_match": exact_match(answer, reference),
        "rouge_l": rouge_l(answer, reference),
        "bleu": sentence_bleu(answer, reference),
    }


def summarise(answers: list[str], references: list[str | None]) -> dict[str, Any]:
    """One variant's scores over the prompts that have a reference."""
    pairs = [(a, r) for a, r in zip(answers, references, strict=True) if r is not None]
    if not pairs:
        return {"scored": 0, "exact_match": None, "rouge_l": None, "bleu": None}
    hyps, refs = [a for a, _ in pairs], [r for _, r in pairs]
    return {
        "scored": len(pairs),
        "exact_match": sum(exact_match(a, r) for a, r in pairs) / len(pairs),
        "rouge_l": sum(rouge_l(a, r) for a, r in pairs) / len(pairs),
        "bleu": corpus_bleu(hyps, refs),
    }
