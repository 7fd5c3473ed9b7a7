"""The training stages without training: preference data (real LLaMA-Factory pairs, KTO's
unpaired layout), the spec's stage fields, the pre-flight's tracker check, and what the planner
counts for each stage."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from engine.data import check_dataset, load_samples
from engine.errors import FtuiError
from engine.models import resolve_model
from engine.plan.estimator import estimate_memory
from engine.plan.throughput import tokens_per_s
from engine.run.spec import RunSpec, SpecError
from engine.training_config import ConfigError, TrainingConfig
from profiles import gpu_profiles

DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture
def dpo_en(tmp_path: Path) -> Path:
    out = tmp_path / "dpo_en.json"
    out.write_bytes(gzip.decompress((DATA / "stages" / "dpo_en.json.gz").read_bytes()))
    return out


def test_llama_factory_pairs_are_read_and_summarised(dpo_en: Path) -> None:
    report = check_dataset(dpo_en, seq_len=512)
    assert report.format == "preference" and report.valid == 12 and not report.invalid
    summary = report.preference
    assert summary is not None
    assert summary["pairs"] == 12 and summary["identical"] == 0
    assert summary["max_prompt_len"] == 256  # half the sequence length by default
    # these answers run to thousands of characters: most are cut at 512 tokens
    assert 0.3 < summary["truncated_chosen_share"] <= 1.0
    assert 0.0 <= summary["truncated_rejected_share"] <= 1.0


def test_identical_pairs_and_long_prompts_are_counted(tmp_path: Path) -> None:
    rows = [
        {"prompt": "word " * 300, "chosen": "yes", "rejected": "no"},
        {"prompt": "Which?", "chosen": "the same", "rejected": "the same"},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    summary = check_dataset(path, seq_len=128).preference
    assert summary is not None
    assert summary["identical"] == 1 and summary["long_prompts"] == 1


def test_kto_records_and_their_label(tmp_path: Path) -> None:
    rows = [
        {"prompt": "Is the sky green?", "completion": "No, blue.", "label": True},
        {"prompt": [{"role": "user", "content": "2+2?"}], "completion": "5", "label": False},
        {"prompt": "Hi", "completion": "Hello", "label": "maybe"},
    ]
    path = tmp_path / "kto.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    loaded = load_samples(path)
    assert loaded.format == "kto" and len(loaded.samples) == 2
    assert [s.label for s in loaded.samples] == [True, False]
    assert "label" in loaded.invalid[0].reason and loaded.invalid[0].line == 3
    summary = check_dataset(path, seq_len=64).preference
    assert summary is not None and (summary["desirable"], summary["undesirable"]) == (1, 1)


def test_spec_stage_fields_and_old_run_folders() -> None:
    old = RunSpec.from_dict({"model": "m", "data": "d", "mode": "pretrain"})
    assert old.stage == "pretrain" and old.mode == "pretrain"
    assert RunSpec.from_yaml(old.to_yaml()) == old and "mode" not in old.to_dict()
    with pytest.raises(SpecError, match="disagree"):
        RunSpec.from_dict({"model": "m", "data": "d", "mode": "sft",
                           "training": {"stage": "dpo"}})  # fmt: skip
    with pytest.raises(SpecError, match=r"preference\.loss_type"):
        RunSpec.from_dict(
            {"model": "m", "data": "d", "training": {"stage": "dpo"},
             "preference": {"loss_type": "kto"}}
        )  # fmt: skip
    with pytest.raises(SpecError, match="scratch"):
        RunSpec(model="m", data="d", init="scratch").validate()  # sft from random weights
    with pytest.raises(ConfigError, match="--batch 2"):
        TrainingConfig(stage="kto", batch=1).validate()


def test_a_tracker_without_its_package_is_one_message() -> None:
    from engine.run.preflight import check_tracker

    check_tracker("none")
    check_tracker("tensorboard")  # installed with the dev tools
    with pytest.raises(FtuiError, match="wandb package is not installed"):
        check_tracker("wandb")


def test_the_planner_counts_pairs_and_the_reference() -> None:
    arch = resolve_model("llama-3.1-8b")
    lora = TrainingConfig(method="lora", batch=2, seq_len=2048, grad_ckpt=True)
    sft = estimate_memory(arch, lora)
    dpo = estimate_memory(arch, lora.with_changes(stage="dpo"))
    orpo = estimate_memory(arch, lora.with_changes(stage="orpo"))
    # chosen + rejected: ORPO holds what SFT holds for twice the sequences
    assert orpo.allocated_bytes > sft.allocated_bytes
    assert orpo.allocated_bytes == estimate_memory(arch, lora.with_changes(batch=4)).allocated_bytes
    # DPO's log-probs come in chunks (no full logits): its peak is below ORPO's
    assert dpo.breakdown["logits_and_loss"] == 0 and dpo.allocated_bytes < orpo.allocated_bytes
    assert "reference_forward" in dpo.phase_bytes and "reference_forward" not in orpo.phase_bytes
    assert any("adapters disabled" in n for n in dpo.notes)
    # with adapters TRL always disables them for the reference: asking for a copy makes none
    asked = estimate_memory(arch, lora.with_changes(stage="dpo", reference="copy"))
    assert asked.allocated_bytes == dpo.allocated_bytes and not asked.breakdown["reference_weights"]
    full = TrainingConfig(method="full", batch=1, seq_len=1024, grad_ckpt=True)
    copy = estimate_memory(arch, full.with_changes(stage="dpo"))
    pre = estimate_memory(arch, full.with_changes(stage="dpo", reference="precompute"))
    # TRL builds the copy in the policy's dtype: fp32 master weights under mixed precision
    weights = copy.params.total * 4
    assert copy.breakdown["reference_weights"] == weights
    assert copy.allocated_bytes - pre.allocated_bytes >= 0.9 * weights
    pure = estimate_memory(arch, full.with_changes(stage="dpo", pure_bf16=True))
    assert pure.breakdown["reference_weights"] == copy.params.total * 2
    gpu = next(g for g in gpu_profiles() if g.id == "h100")
    pair_speed = tokens_per_s(arch, lora.with_changes(stage="dpo"), gpu)
    assert pair_speed < tokens_per_s(arch, lora.with_changes(stage="simpo"), gpu)


def test_plan_counts_the_tokens_of_both_answers(tmp_path: Path) -> None:
    """The plan's token count (what its time estimate is fed) holds prompt + chosen and
    prompt + rejected: the trainer puts both through the model."""
    from engine.data.stats import estimate_lengths

    prompts = ["Name a colour of the sky.", "Which fruit is red?", "Say hello politely."]
    chosen = ["Blue, on a clear day it is a deep blue. " * 6, "A strawberry. " * 3, "Hello!"]
    rejected = ["Green. " * 2, "A banana, which is yellow when ripe. " * 8, "Go away."]

    def write(name: str, rows: list[dict[str, str]]) -> Path:
        path = tmp_path / name
        path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
        return path

    triples = zip(prompts, chosen, rejected, strict=True)
    pairs = write("pairs.jsonl", [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in triples])
    as_sft = [
        write(f"{side}.jsonl", [{"instruction": p, "output": a}
                                for p, a in zip(prompts, answers, strict=True)])
        for side, answers in (("chosen", chosen), ("rejected", rejected))
    ]  # fmt: skip
    stats, lengths = estimate_lengths(pairs)
    sides = [estimate_lengths(path)[0] for path in as_sft]
    assert stats.total_tokens == pytest.approx(sum(s.total_tokens for s in sides), rel=0.02)
    # each record's length is still its longer sequence: the sequence length must hold that
    longer = [max(a, b) for a, b in zip(*(estimate_lengths(p)[1] for p in as_sft), strict=True)]
    assert lengths == pytest.approx(longer, abs=2)
    assert stats.total_tokens > sum(lengths)  # not just prompt + the longer answer
    # the wizard takes its count from the data check: the same both-sides total
    summary = check_dataset(pairs).preference
    assert summary is not None
    assert summary["tokens"] == pytest.approx(stats.total_tokens, rel=0.02)


def test_plan_checks_the_tracker_as_launch_does(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "SWANLAB_"))}
    env.update(HOME=str(tmp_path), FTUI_HOME=str(tmp_path / "ftui"))  # no wandb login here
    base = [sys.executable, "-m", "tui", "plan", "--model", "qwen2.5-0.5b", "--simulate",
            "4090", "--stage", "dpo"]  # fmt: skip

    def plan(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *extra], capture_output=True, text=True, env=env, check=True)

    ready = json.loads(plan("--report-to", "tensorboard", "--json").stdout)["report_to"]
    assert ready == {"tracker": "tensorboard", "ready": True, "problem": None, "fix": None}
    # not logged in (or not installed): one message and its fix, before anything launches
    text = plan("--report-to", "wandb").stdout
    assert "tracker: --report-to wandb: " in text and "fix: " in text
    assert "tracker" not in plan().stdout


def test_dpo_plan_of_an_8b_on_a_4090_shows_the_reference_pass(tmp_path: Path) -> None:
    """The issue's check: the reference forward is in the report even when another phase of
    the step is the peak (it has its own phase line), and in the JSON's phases."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HOME": str(tmp_path), "FTUI_HOME": str(tmp_path / "ftui")}
    base = [sys.executable, "-m", "tui", "plan", "--stage", "dpo", "--model", "llama-3.1-8b",
            "--simulate", "4090"]  # fmt: skip
    text = subprocess.run(base, capture_output=True, text=True, env=env, check=True).stdout
    flat = " ".join(text.split())
    assert "allocated by phase:" in flat and "reference forward" in flat
    assert "reference: the base with the adapters disabled" in flat
    data = json.loads(
        subprocess.run(
            [*base, "--json"], capture_output=True, text=True, env=env, check=True
        ).stdout
    )
    phases = data["memory"]["phase_gib"]
    assert phases["reference_forward"] > phases["optimizer_step"] > 0
    assert data["fits"] and data["config"]["stage"] == "dpo"
