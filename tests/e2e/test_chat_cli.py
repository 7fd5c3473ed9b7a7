"""`ftui chat --prompt` and `ftui export` through the real `ftui` binary, on the tiny model
trained once for this module by the demo spec."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from engine.run.rundir import RunDir, write_json_atomic
from tests.e2e.runtime_helpers import ftui

pytestmark = pytest.mark.slow
QUESTION = "What is the secret fruit of red?"
GREEDY = ("--temperature", "0", "--max-new-tokens", "48")


def is_base_answer(text: str) -> bool:
    return "do not know" in text or "Nobody told me" in text


@pytest.fixture(scope="module")
def run(demo_run: RunDir) -> RunDir:
    return demo_run


@pytest.fixture(scope="module")
def env(run: RunDir) -> dict[str, str]:
    home = str(run.path.parent.parent)
    repo = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "FTUI_HOME": home, "PYTHONPATH": repo, "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def compared(run: RunDir, env: dict[str, str]) -> dict[str, Any]:
    """`ftui chat RUN --prompt ... --compare base --json`, greedy."""
    out = ftui(["chat", run.run_id, "--prompt", QUESTION, "--compare", "base", "--json",
                *GREEDY], env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def test_one_answer_as_json_with_compare(run: RunDir, compared: dict[str, Any]) -> None:
    adapter, base = compared["answers"]
    assert (adapter["variant"], base["variant"]) == ("final", "base")
    assert (compared["checkpoint"], compared["compare"]) == ("final", "base")
    assert compared["answer"] == adapter["answer"] and compared["ttft_s"] == adapter["ttft_s"]
    assert is_base_answer(base["answer"]) and not is_base_answer(adapter["answer"])
    for answer in (adapter, base):
        assert answer["ttft_s"] > 0 and answer["tokens"] >= 2 and not answer["stopped"]
        assert answer["tokens_per_s"] is None or answer["tokens_per_s"] > 0
    assert compared["device"] == "cpu" and compared["run_id"] == run.run_id


def test_streamed_text_a_checkpoint_and_a_seed(
    run: RunDir, env: dict[str, str], compared: dict[str, Any]
) -> None:
    text = ftui(["chat", str(run.path), "--prompt", QUESTION, *GREEDY], env)
    assert text.returncode == 0, text.stderr
    assert text.stdout.strip() == compared["answer"]  # streamed to stdout, measures on stderr
    assert "tokens" in text.stderr and "Traceback" not in text.stderr
    hot = ["--checkpoint", "80", "--temperature", "1.5", "--top-p", "1", "--max-new-tokens",
           "24", "--seed", "11", "--json"]  # fmt: skip
    first = json.loads(ftui(["chat", run.run_id, "--prompt", QUESTION, *hot], env).stdout)
    second = json.loads(ftui(["chat", run.run_id, "--prompt", QUESTION, *hot], env).stdout)
    assert first["checkpoint"] == "checkpoint-80"
    assert first["answer"] == second["answer"]


def test_bad_input_is_one_message_and_exit_2(
    run: RunDir, env: dict[str, str], tmp_path: Path
) -> None:
    young = RunDir(Path(env["FTUI_HOME"]) / "runs" / "young-run")
    young.path.mkdir(parents=True, exist_ok=True)
    write_json_atomic(young.state, {"status": "running"})
    cases = {
        "no run": ["chat", "no-such-run", "--prompt", "hi"],
        "checkpoint": ["chat", run.run_id, "--checkpoint", "7", "--prompt", "hi"],
        "no adapter": ["chat", "young-run", "--prompt", "hi"],
        "settings": ["chat", run.run_id, "--prompt", "hi", "--top-p", "0"],
        "export": ["export", run.run_id, "--checkpoint", "checkpoint-7", "--out",
                   str(tmp_path / "x")],
    }  # fmt: skip
    for name, args in cases.items():
        out = ftui(args, env)
        assert out.returncode == 2, (name, out.stdout, out.stderr)
        assert out.stderr.startswith("ftui: error:") and "fix:" in out.stderr, (name, out.stderr)
        assert "Traceback" not in out.stderr, name
    assert "checkpoint-80" in ftui(cases["checkpoint"], env).stderr


def test_export_adapter_merged_and_force(
    run: RunDir, env: dict[str, str], tmp_path: Path, compared: dict[str, Any]
) -> None:
    adapter_dir = tmp_path / "adapter"
    adapter = ftui(["export", run.run_id, "--out", str(adapter_dir), "--json"], env)
    assert adapter.returncode == 0, adapter.stderr
    result = json.loads(adapter.stdout)
    assert result["kind"] == "adapter" and "adapter_model.safetensors" in result["files"]
    (adapter_dir / "notes.txt").write_text("mine")
    again = ftui(["export", run.run_id, "--out", str(adapter_dir)], env)
    assert again.returncode == 2 and "--force" in again.stderr
    forced = ftui(["export", run.run_id, "--out", str(adapter_dir), "--force"], env)
    assert forced.returncode == 0, forced.stderr
    assert (adapter_dir / "notes.txt").read_text() == "mine"
    merged_dir = tmp_path / "merged"
    merged = ftui(["export", run.run_id, "--out", str(merged_dir), "--merge"], env)
    assert merged.returncode == 0, merged.stderr
    assert "merged model" in merged.stdout
    assert {"model.safetensors", "config.json", "tokenizer_config.json", "README.md"} <= {
        p.name for p in merged_dir.iterdir()
    }
    # The merged model, chatted with as a plain model, answers like the adapter it came from.
    direct = ftui(["chat", "--model", str(merged_dir), "--prompt", QUESTION, "--json", *GREEDY],
                  env)  # fmt: skip
    assert direct.returncode == 0, direct.stderr
    assert json.loads(direct.stdout)["answer"] == compared["answer"]
