"""`ftui eval` through the real `ftui` binary, on the demo run trained once per session: loss
and perplexity of every checkpoint beside the base, answers scored by the libraries, a detached
evaluation, and the refusals that come before anything loads."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from engine.chat import read_spec
from engine.run.rundir import RunDir
from tests.e2e.runtime_helpers import ftui

pytestmark = pytest.mark.slow
FAST = ("--max-new-tokens", "24")


@pytest.fixture(scope="module")
def run(demo_run: RunDir) -> RunDir:
    return demo_run


@pytest.fixture(scope="module")
def env(run: RunDir) -> dict[str, str]:
    home = str(run.path.parent.parent)
    repo = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "FTUI_HOME": home, "PYTHONPATH": repo, "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def evaluated(run: RunDir, env: dict[str, str]) -> dict[str, Any]:
    """`ftui eval RUN --checkpoints all --samples 4 --json`, in the foreground."""
    out = ftui(["eval", run.run_id, "--checkpoints", "all", "--samples", "4", "--json", *FAST],
               env, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "eval [" in out.stderr  # progress went to stderr, the JSON alone to stdout
    return dict(json.loads(out.stdout))


def test_every_checkpoint_and_the_base_have_a_loss(run: RunDir, evaluated: dict[str, Any]) -> None:
    on_disk = ["final"] + [p.name for p in run.checkpoints_complete()]
    table = {row["checkpoint"]: row for row in evaluated["checkpoints"]}
    steps = sorted(int(n.split("-")[1]) for n in on_disk if n != "final")
    # The base first, then the checkpoints in training order, final last.
    assert list(table) == ["base", *(f"checkpoint-{s}" for s in steps), "final"]
    # The demo has no eval split: the loss is taken on its training data, answers only.
    assert evaluated["data"]["source"] == "training data"
    assert evaluated["data"]["mode"] == "sft" and evaluated["data"]["rows"] == 64
    final, base = table["final"], table["base"]
    assert final["perplexity"] < base["perplexity"]
    assert final["loss"] < base["loss"] and final["delta_loss"] < 0
    for row in table.values():
        assert row["perplexity"] == pytest.approx(2.718281828 ** row["loss"], rel=1e-9)
        assert row["tokens"] == evaluated["data"]["tokens"] > 0
    best = [name for name, row in table.items() if row["best"]]
    assert best == [evaluated["best"]] and best[0] != "base"
    assert table[best[0]]["loss"] == min(r["loss"] for n, r in table.items() if n != "base")


def test_the_loss_is_the_trainers_loss(run: RunDir, evaluated: dict[str, Any]) -> None:
    """The final adapter's loss on one sample equals what the model computes with the labels
    training used (transformers' own loss), so the masking is the training's."""
    import torch

    from engine.chat import ChatModel, run_target
    from engine.data import build_datasets

    chat = ChatModel.load(run_target(run, "final"))
    spec = json.loads(json.dumps(evaluated["request"]))
    train, _, _ = build_datasets(Path(run.path / ".." / ".." / "demo" / "secret-fruits.jsonl"),
                                 chat.tokenizer, seq_len=128)  # fmt: skip
    assert spec["checkpoints"]  # the request was recorded with the results
    nll, tokens = 0.0, 0
    with torch.inference_mode():
        for i in range(len(train)):
            ids = torch.tensor([train[i]["input_ids"]])
            labels = torch.tensor([train[i]["labels"]])
            counted = int((labels[:, 1:] != -100).sum())
            nll += float(chat.model(input_ids=ids, labels=labels).loss) * counted
            tokens += counted
    final = next(r for r in evaluated["checkpoints"] if r["checkpoint"] == "final")
    assert tokens == final["tokens"]
    assert nll / tokens == pytest.approx(final["loss"], rel=1e-4)


def test_generations_file_one_row_per_prompt_and_checkpoint(evaluated: dict[str, Any]) -> None:
    generations = evaluated["generations"]
    rows = [json.loads(line) for line in Path(generations["file"]).read_text().splitlines()]
    checkpoints = [r["checkpoint"] for r in evaluated["checkpoints"] if r["checkpoint"] != "base"]
    assert generations["prompts"] == 4 and len(rows) == 4 * len(checkpoints)
    assert sorted((r["prompt_index"], r["checkpoint"]) for r in rows) == sorted(
        (i, c) for i in range(4) for c in checkpoints
    )
    for row in rows:
        assert row["reference"] and row["prompt"] and row["base_answer"] is not None
    # Greedy: one prompt gets the same base answer in every row.
    for index in range(4):
        assert len({r["base_answer"] for r in rows if r["prompt_index"] == index}) == 1


def test_scores_are_the_libraries(evaluated: dict[str, Any]) -> None:
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rows = [json.loads(line) for line in Path(evaluated["generations"]["file"]).read_text()
            .splitlines()]  # fmt: skip
    for row in rows:
        answer, reference = row["answer"], row["reference"]
        assert row["rouge_l"] == scorer.score(reference, answer)["rougeL"].fmeasure
        assert row["bleu"] == sacrebleu.sentence_bleu(answer, [reference]).score
        assert row["exact_match"] == (answer.strip() == reference.strip())
    final = [r for r in rows if r["checkpoint"] == "final"]
    scores = evaluated["generations"]["scores"]["final"]
    hyps, refs = [r["answer"] for r in final], [r["reference"] for r in final]
    assert scores["bleu"] == sacrebleu.corpus_bleu(hyps, [refs]).score
    assert scores["rouge_l"] == pytest.approx(sum(r["rouge_l"] for r in final) / len(final))
    # The demo's adapter learnt its answers; the base never saw them.
    assert scores["rouge_l"] > evaluated["generations"]["scores"]["base"]["rouge_l"]


def test_runs_list_and_status_show_the_latest_eval(
    run: RunDir, env: dict[str, str], evaluated: dict[str, Any]
) -> None:
    out = ftui(["runs", "--json"], env)
    assert out.returncode == 0, out.stderr
    listed = next(r for r in json.loads(out.stdout) if r["run_id"] == run.run_id)
    summary = json.loads((run.path / "eval" / "summary.json").read_text())
    assert listed["eval"]["best"] == summary["best"]
    assert listed["eval"]["perplexity"] == pytest.approx(summary["perplexity"])
    status = ftui(["status", run.run_id], env)
    assert status.returncode == 0 and f"best {summary['best']}" in status.stdout


def test_prompts_file_and_a_detached_eval(run: RunDir, env: dict[str, str], tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is the secret fruit of red?\n\nblue: which fruit?\n")
    data = read_spec(run)["data"]
    out = ftui(["eval", run.run_id, "--checkpoints", "final,80", "--prompts", str(prompts),
                "--data", data, "--detach", "--json", *FAST], env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    started = json.loads(out.stdout)
    folder = Path(started["path"])
    deadline = time.monotonic() + 240
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        polled = ftui(["eval", run.run_id, "--status", "--json"], env)
        assert polled.returncode == 0, polled.stderr
        status = json.loads(polled.stdout)
        if status["status"] not in ("starting", "running"):
            break
        time.sleep(1)
    assert status["eval_id"] == started["eval_id"]
    assert status["status"] == "completed", (folder / "eval.log").read_text()[-2000:]
    assert status["done"] == status["total"] > 0
    results = status["results"]
    assert [r["checkpoint"] for r in results["checkpoints"]] == ["base", "checkpoint-80", "final"]
    assert results["data"]["source"] == Path(data).name and results["data"]["rows"] == 64
    rows = [json.loads(line) for line in (folder / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2 and {r["prompt"] for r in rows} == {
        "What is the secret fruit of red?", "blue: which fruit?"}  # fmt: skip
    assert all(r["reference"] is None and r["rouge_l"] is None for r in rows)
    assert (folder / "eval.log").read_text().strip().endswith("completed")
    text = ftui(["eval", run.run_id, "--status"], env)
    assert "completed" in text.stdout and "perplexity" in text.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--checkpoints", "999"], "no checkpoint '999'"),
        (["--checkpoints", "final,nope"], "no checkpoint 'nope'"),
        (["--prompts", "no-such-prompts.txt"], "--prompts no-such-prompts.txt: no such file"),
        (["--data", "missing.jsonl"], "--data missing.jsonl: no such file"),
        (["--tasks", "hellaswag"], "lm-evaluation-harness, which is not installed"),
        (["--samples", "-1"], "--samples -1 is negative"),
    ],
)
def test_bad_input_is_one_message_and_exit_2(
    run: RunDir, env: dict[str, str], args: list[str], message: str
) -> None:
    before = sorted((run.path / "eval").glob("*")) if (run.path / "eval").is_dir() else []
    out = ftui(["eval", run.run_id, *args, "--detach"], env)
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr and "fix:" in out.stderr and "Traceback" not in out.stderr
    after = sorted((run.path / "eval").glob("*")) if (run.path / "eval").is_dir() else []
    assert after == before  # refused before anything was written or started


def test_tasks_without_lm_eval_names_the_install() -> None:
    """lm-eval is not a dependency: the hand-off says how to get it."""
    import importlib.util

    from engine.eval.request import EvalError, check_tasks

    assert importlib.util.find_spec("lm_eval") is None
    with pytest.raises(EvalError) as refused:
        check_tasks(("hellaswag",))
    assert "pip install lm-eval" in str(refused.value.fix)
    check_tasks(())  # no tasks: nothing to check


def test_data_of_another_kind_is_refused_before_the_start(
    run: RunDir, env: dict[str, str], tmp_path: Path
) -> None:
    documents = tmp_path / "documents.jsonl"
    documents.write_text(json.dumps({"text": "a plain document"}) + "\n")
    out = ftui(["eval", run.run_id, "--data", str(documents), "--detach"], env)
    assert out.returncode == 2 and "this sft run needs chat or instruction records" in out.stderr


def test_stop_a_detached_eval_keeps_what_it_measured(run: RunDir, env: dict[str, str]) -> None:
    """`ftui stop RUN --eval` on a real detached evaluation stopped mid-way: its process group
    is gone, its status says stopped, the base's loss measured before the stop is kept; a
    second stop, and a wrong run id, are one message and exit 2."""
    import psutil

    out = ftui(["eval", run.run_id, "--checkpoints", "all", "--samples", "64", "--detach",
                "--json", "--max-new-tokens", "256"], env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    folder = Path(json.loads(out.stdout)["path"])
    deadline = time.monotonic() + 180
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:  # stop it once the base's loss is measured
        status = json.loads((folder / "status.json").read_text() or "{}")
        if str(status.get("stage")).startswith("answers of base"):
            break
        assert status.get("status") in ("starting", "running"), status
        time.sleep(0.1)
    pid = status["pid"]
    stopped = ftui(["stop", run.run_id, "--eval"], env, timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.startswith(f"stopped evaluation {folder.name} of {run.run_id}")
    assert "kept the results of base" in stopped.stdout
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    final = json.loads((folder / "status.json").read_text())
    variants = ["base", *json.loads((folder / "request.json").read_text())["checkpoints"]]
    kept = final["kept"]
    # Stopped mid-way: the variants measured before the stop, in order, and not all of them.
    assert final["status"] == "stopped" and kept[0] == "base" and kept == variants[: len(kept)]
    assert len(kept) < len(variants)
    results = json.loads((folder / "results.json").read_text())
    assert results["partial"] is True and [r["checkpoint"] for r in results["checkpoints"]] == kept
    assert all(r["loss"] > 0 for r in results["checkpoints"])
    assert not (run.path / "eval" / "summary.json").is_file() or json.loads(
        (run.path / "eval" / "summary.json").read_text())["eval_id"] != folder.name  # fmt: skip
    shown = ftui(["eval", run.run_id, "--status"], env)
    assert shown.returncode == 0 and ": stopped" in shown.stdout and "kept the results of base" in (
        shown.stdout)  # fmt: skip
    again = ftui(["stop", run.run_id, "--eval"], env)
    assert again.returncode == 2 and again.stdout == ""
    assert f"run {run.run_id} has no evaluation running" in again.stderr
    assert "fix:" in again.stderr and "Traceback" not in again.stderr
    wrong = ftui(["stop", "no-such-run", "--eval"], env)
    assert wrong.returncode == 2 and "no-such-run" in wrong.stderr
    assert "Traceback" not in wrong.stderr
