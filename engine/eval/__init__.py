"""Evaluate a run's checkpoints: loss and perplexity on held-out data, greedy answers beside the
references and the base's, overlap scores, and lm-evaluation-harness tasks where it is installed.

    request = make_request(find_run("demo"), checkpoints="all", samples=8)
    folder, request = create_eval_dir(request)
    results = run_eval(folder, request, echo=print)       # or start_detached(request)

- The loss is measured on the rows `engine.data.build_datasets` builds from the run's spec (its
  eval split; its training data when it has none; or `--data FILE`), so the masking is the
  training's: chat data counts only the assistant answers and their end-of-turn token. It is
  token-weighted (summed over every counted token, divided by their number); perplexity is
  exp(loss).
- One base model, loaded once by `engine.chat.ChatModel`; every checkpoint is a named adapter
  on it, the base is the same model with the adapters off (a full fine-tune loads each
  checkpoint in turn).
- Answers are greedy (seeded), scored by `rouge-score` (ROUGE-L) and `sacrebleu` (BLEU).
- Files: `RUN/eval/<eval-id>/` holds request.json, status.json (progress), results.json,
  generations.jsonl (one row per prompt and checkpoint) and eval.log (detached runs);
  `RUN/eval/summary.json` is the latest finished evaluation, which `ftui runs` shows.

Modules: `request` (what to evaluate, checked), `prompts`, `measure` (loss, answers, models),
`scoring`, `harness` (lm-eval), `runner` (orchestration, detached start, status), `control`
(`ftui stop RUN --eval`: stop a detached evaluation, keeping what it measured). Headless and
cheap to import: torch, transformers, peft and the scoring libraries load inside functions.
"""

from __future__ import annotations

from engine.eval.request import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_SAMPLES,
    EvalDir,
    EvalError,
    EvalRequest,
    choose_checkpoints,
    create_eval_dir,
    latest_eval,
    lm_eval_installed,
    make_request,
    summary_path,
)
from engine.eval.runner import eval_status, run_eval, start_detached

__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "DEFAULT_SAMPLES",
    "EvalDir",
    "EvalError",
    "EvalRequest",
    "choose_checkpoints",
    "create_eval_dir",
    "eval_status",
    "latest_eval",
    "lm_eval_installed",
    "make_request",
    "run_eval",
    "start_detached",
    "summary_path",
]
