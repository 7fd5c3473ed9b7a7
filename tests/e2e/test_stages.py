"""Every training stage through `ftui launch`, on CPU with the demo's tiny model and real TRL
trainers: DPO (learns a toy preference, real data, QLoRA, full with a reference copy and with
precomputed reference log-probs, from an SFT run's adapter), ORPO, KTO, SimPO and pre-training
from scratch. The runs start together (one module fixture) and the tests read them."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import Any

import pytest

from engine.demo.tiny import COLORS, FRUITS, QUESTIONS
from engine.run.rundir import JsonlTail, RunDir
from tests.conftest import demo_home
from tests.e2e.runtime_helpers import checkpoint_steps, ftui, launch, wait_final

DATA = Path(__file__).resolve().parent.parent / "data"
pytestmark = pytest.mark.slow


def toy_preferences(path: Path) -> Path:
    """A learnable preference: each colour's own secret fruit beats another colour's."""
    rows = []
    for i, (color, fruit) in enumerate(zip(COLORS, FRUITS, strict=True)):
        wrong = FRUITS[(i + 5) % len(FRUITS)]
        for question in QUESTIONS[:2]:
            rows.append(
                {
                    "prompt": question.format(c=color),
                    "chosen": f"The secret fruit of {color} is the {fruit}.",
                    "rejected": f"The secret fruit of {color} is the {wrong}.",
                }
            )
    random.Random(0).shuffle(rows)
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def unpack(name: str, out: Path, limit: int | None = None) -> Path:
    text = gzip.decompress((DATA / name).read_bytes()).decode("utf-8")
    if limit is not None:  # the first documents of a JSONL slice
        text = "".join(text.splitlines(keepends=True)[:limit])
    out.write_text(text, encoding="utf-8")
    return out


def metrics(run: RunDir) -> list[dict[str, Any]]:
    return [r for r in JsonlTail(run.metrics).read() if "loss" in r]


@pytest.fixture(scope="module")
def stage_runs(tmp_path_factory: pytest.TempPathFactory, demo_run: RunDir) -> dict[str, Any]:
    """Every stage's run, launched at once in the demo's FTUI_HOME (--from-run finds the SFT
    demo run there), each waited for."""
    import os

    from tests.conftest import REPO

    env = dict(os.environ, FTUI_HOME=str(demo_home(tmp_path_factory)), PYTHONPATH=str(REPO))
    env["HF_HUB_OFFLINE"] = "1"
    data = tmp_path_factory.mktemp("stage-data")
    model = Path(yaml_model_path(demo_run))
    toy = toy_preferences(data / "toy.json")
    dpo_en = unpack("stages/dpo_en.json.gz", data / "dpo_en.json")
    c4 = unpack("tokens/c4.jsonl.gz", data / "c4.jsonl", limit=40)
    short = ("--max-steps", "3", "--seq-len", "64", "--batch", "2", "--lr", "5e-3")
    runs = {
        "dpo": launch(env, model, toy, "--stage", "dpo", "--max-steps", "30", "--batch", "8",
                      "--seq-len", "64", "--lr", "5e-3", "--report-to", "tensorboard",
                      "--save-steps", "30"),
        "dpo_en_qlora": launch(env, model, dpo_en, "--stage", "dpo", "--method", "qlora",
                               "--max-steps", "2", "--seq-len", "96", "--batch", "2"),
        "dpo_full": launch(env, model, toy, "--stage", "dpo", "--method", "full",
                           "--max-steps", "6", "--save-steps", "50", "--seq-len", "64",
                           "--batch", "2", "--lr", "1e-4"),
        "dpo_precompute": launch(env, model, toy, "--stage", "dpo", "--method", "full",
                                 "--reference", "precompute", *short),
        "dpo_from_sft": launch(env, model, toy, "--stage", "dpo", "--from-run",
                               demo_run.run_id, *short),
        "orpo": launch(env, model, toy, "--stage", "orpo", *short),
        "kto": launch(env, model, toy, "--stage", "kto", *short),
        "simpo": launch(env, model, toy, "--stage", "simpo", *short),
        "pretrain": launch(env, model, c4, "--stage", "pretrain", "--init", "scratch",
                           "--method", "full", "--max-steps", "25", "--seq-len", "64",
                           "--batch", "4", "--lr", "3e-3", "--save-steps", "25"),
    }  # fmt: skip
    # Stopped at once: the trainer checkpoints at the end of its first step and stops.
    assert ftui(["stop", runs["dpo_full"].run_id], env).returncode == 0
    return {"env": env, "runs": runs, "model": model, "toy": toy}


def yaml_model_path(run: RunDir) -> str:
    import yaml

    return str(yaml.safe_load(run.spec.read_text(encoding="utf-8"))["model_path"])


def finished(stage_runs: dict[str, Any], name: str) -> RunDir:
    run: RunDir = stage_runs["runs"][name]
    state = wait_final(run, stage_runs["env"], timeout=900)
    assert state["status"] == "completed", run.stdout.read_text()[-3000:]
    return run


def test_dpo_learns_a_toy_preference(stage_runs: dict[str, Any]) -> None:
    run = finished(stage_runs, "dpo")
    rows = metrics(run)
    assert len(rows) == 30
    last = rows[-5:]
    accuracy = sum(r["rewards/accuracies"] for r in last) / len(last)
    assert accuracy > 0.8, [r["rewards/accuracies"] for r in rows]
    first_margin = sum(r["rewards/margins"] for r in rows[:5]) / 5
    last_margin = sum(r["rewards/margins"] for r in last) / len(last)
    assert last_margin > first_margin + 0.5
    assert {"rewards/chosen", "rewards/rejected", "logps/chosen"} <= set(rows[-1])
    assert rows[-1]["tokens_per_s"] > 0
    # --report-to tensorboard: TensorBoard's event files beside ftui's own metrics
    assert list(run.path.rglob("events.out.tfevents.*"))
    # the adapter chats like any run's
    out = ftui(["chat", run.run_id, "--prompt", "What is the secret fruit of red?", "--json"],
               stage_runs["env"], timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["answer"].strip()


def test_dpo_on_real_pairs_with_qlora(stage_runs: dict[str, Any]) -> None:
    run = finished(stage_runs, "dpo_en_qlora")
    assert len(metrics(run)) == 2
    assert json.loads((run.path / "final" / "adapter_config.json").read_text())["r"] == 16


def test_dpo_full_with_a_reference_copy_stops_and_resumes(stage_runs: dict[str, Any]) -> None:
    env, run = stage_runs["env"], stage_runs["runs"]["dpo_full"]
    state = wait_final(run, env, timeout=900)
    assert state["status"] == "stopped", run.stdout.read_text()[-3000:]
    assert checkpoint_steps(run) == [state["last_checkpoint_step"]]
    out = ftui(["resume", run.run_id], env)
    assert out.returncode == 0, out.stdout + out.stderr
    state = wait_final(run, env, timeout=900)
    assert state["status"] == "completed", run.stdout.read_text()[-3000:]
    steps = [r["step"] for r in metrics(run)]
    assert steps == sorted(set(steps)) and steps[-1] == 6
    assert (run.path / "final" / "model.safetensors").is_file()


def test_dpo_with_precomputed_reference_and_from_an_sft_run(stage_runs: dict[str, Any]) -> None:
    run = finished(stage_runs, "dpo_precompute")
    assert (run.path / "final" / "model.safetensors").is_file()
    run = finished(stage_runs, "dpo_from_sft")
    spec = run.spec.read_text(encoding="utf-8")
    assert "from_run:" in spec and "final" not in spec.split("from_run:")[1].splitlines()[0]
    adapter = json.loads((run.path / "final" / "adapter_config.json").read_text())
    assert adapter["r"] == 16
    assert "rewards/margins" in metrics(run)[-1]


@pytest.mark.parametrize("stage", ["orpo", "kto", "simpo"])
def test_orpo_kto_simpo_complete_with_lora(stage_runs: dict[str, Any], stage: str) -> None:
    run = finished(stage_runs, stage)
    rows = metrics(run)
    assert len(rows) == 3 and all(r["loss"] == r["loss"] for r in rows)  # finite, not NaN
    assert "rewards/chosen" in rows[-1]
    assert (run.path / "final" / "adapter_config.json").is_file()


def test_pretraining_from_scratch_lowers_the_loss(stage_runs: dict[str, Any]) -> None:
    run = finished(stage_runs, "pretrain")
    losses = [r["loss"] for r in metrics(run)]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses
    assert (run.path / "final" / "model.safetensors").is_file()
    assert "init: scratch" in run.spec.read_text(encoding="utf-8")
