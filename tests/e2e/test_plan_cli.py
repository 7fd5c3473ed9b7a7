"""`ftui plan` end to end: plans with breakdown, ETA and cost, no GPU, no downloads."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ftui_executable


def plan(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ftui_executable(), "plan", *args], env=env, capture_output=True, text=True, timeout=120
    )


def plan_json(args: list[str], env: dict[str, str]) -> dict:  # type: ignore[type-arg]
    out = plan([*args, "--json"], env)
    assert out.returncode in (0, 1), out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_the_headline_case_prints_a_full_plan(cli_env: dict[str, str]) -> None:
    out = plan(["--model", "llama-3.1-8b", "--method", "qlora", "--simulate", "4090"], cli_env)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for needle in ("Recommended", "qlora", "GiB", "tokens/s", "ETA", "cost", "$", "activations"):
        assert needle in text, needle


@pytest.mark.parametrize(
    ("args", "method", "fits"),
    [
        (["--model", "llama-3.1-8b", "--method", "qlora", "--simulate", "4090"], "qlora", True),
        (["--model", "llama-3.1-8b", "--simulate", "h100"], None, True),
        (["--model", "qwen2.5-0.5b", "--simulate", "t4"], None, True),
        (["--model", "llama-3.3-70b", "--simulate", "h100x8"], None, True),
        (
            ["--model", "llama-3.3-70b", "--method", "qlora", "--simulate", "a100-80gb"],
            "qlora",
            True,
        ),
        # transformers 5's fused 3-D experts stay 16-bit under bitsandbytes: an MoE QLoRA
        # needs room for them (Mixtral's 45B expert parameters: ~84 GiB).
        (["--model", "mixtral-8x7b", "--method", "qlora", "--simulate", "h200"], "qlora", True),
        (["--model", "qwen2.5-72b", "--method", "full", "--simulate", "4090"], "full", False),
        (["--model", "gemma-2-9b", "--method", "lora", "--gpu", "l40s"], "lora", True),
        (["--model", "phi-4", "--gpu", "a10g", "--seq-len", "4096"], None, True),
        # PEFT's all-linear also adapts the fused experts and routers (~1B trainable
        # parameters on Qwen3-30B-A3B): no longer within an A100-80GB, within an H200.
        (
            ["--model", "qwen3-30b-a3b", "--method", "qlora", "--simulate", "a100-80gb"],
            "qlora",
            False,
        ),
        (["--model", "qwen3-30b-a3b", "--method", "qlora", "--simulate", "h200"], "qlora", True),
        (["--model", "mistral-7b-v0.3", "--gpu", "3090", "--num-gpus", "2"], None, True),
        (["--model", "deepseek-r1-distill-qwen-7b", "--simulate", "b200x8"], None, True),
    ],
)
def test_a_dozen_plans(
    args: list[str], method: str | None, fits: bool, cli_env: dict[str, str]
) -> None:
    data = plan_json(args, cli_env)
    assert data["fits"] is fits
    assert data["model"]["params"] > 1e8 and data["model"]["trainable_params"] > 0
    if method:
        assert data["config"]["method"] == method
    memory = data["memory"]
    assert memory["allocated_gib"] <= memory["reserved_gib"] <= memory["device_gib"]
    assert set(memory["breakdown_gib"]) >= {
        "weights", "trainable_weights", "gradients", "optimizer_states", "activations",
        "logits_and_loss", "temporaries", "overhead",
    }  # fmt: skip
    assert memory["peak_phase"] in ("forward_backward", "recompute", "optimizer_step")
    if fits:
        assert memory["device_gib"] <= 0.9 * data["gpu"]["memory_gib"] + 1e-6
        assert data["throughput_tokens_per_s"] > 0 and data["eta_s"] > 0 and data["cost_usd"] > 0
        assert data["mode"] == "recommend"
    else:
        assert data["suggestions"]
    for key in ("method", "batch", "grad_accum", "seq_len", "rank", "grad_ckpt", "sharding"):
        assert key in data["config"]


def test_recommendations_list_runners_up_of_the_same_shape(cli_env: dict[str, str]) -> None:
    data = plan_json(["--model", "llama-3.1-8b", "--simulate", "a100-80gb"], cli_env)
    assert data["alternatives"]
    for alt in data["alternatives"]:
        assert {"config", "memory", "throughput_tokens_per_s", "eta_s", "cost_usd"} <= set(alt)
    speeds = [data["throughput_tokens_per_s"]] + [
        a["throughput_tokens_per_s"] for a in data["alternatives"]
    ]
    assert speeds[0] == max(speeds)  # the recommendation is the fastest that fits


def test_pinning_every_knob_estimates_instead(cli_env: dict[str, str]) -> None:
    data = plan_json(
        ["--model", "llama-3.1-8b", "--method", "lora", "--batch", "4", "--grad-ckpt",
         "--seq-len", "1024", "--simulate", "h100", "--rank", "32"],
        cli_env,
    )  # fmt: skip
    assert data["mode"] == "estimate" and data["alternatives"] == []
    assert data["config"]["batch"] == 4 and data["config"]["rank"] == 32


def test_a_dataset_drives_seq_len_and_eta(tmp_path: Path, cli_env: dict[str, str]) -> None:
    rows = [
        {"instruction": "Say hi " * (20 + i), "output": "hi " * (50 + 3 * i)} for i in range(200)
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    data = plan_json(["--model", "qwen2.5-1.5b", "--simulate", "l4", "--dataset", str(path),
                      "--epochs", "2"], cli_env)  # fmt: skip
    assert data["dataset"]["records"] == 200
    p99 = data["dataset"]["p99"]
    assert p99 <= data["config"]["seq_len"] < p99 + 256  # covers 99% of samples, no more
    assert data["train_tokens_per_epoch"] == data["dataset"]["total_tokens"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "llama-3.1-9b", "--simulate", "h100"], "did you mean"),
        (["--model", "llama-3.1-8b", "--rank", "0", "--simulate", "h100"], "--rank"),
        (["--model", "qwen2.5-0.5b", "--seq-len", "65536", "--simulate", "h100"], "--rope-scaling"),
        (
            ["--model", "llama-3.1-8b", "--method", "qlora", "--dtype", "fp32", "--sharding",
             "zero3", "--offload", "params", "--simulate", "h100x2"],
            "qlora",
        ),
        (["--model", "llama-3.1-8b", "--gpu", "tpu"], "--gpu"),
        (["--model", "llama-3.1-8b", "--simulate", "h100", "--headroom", "7"], "--headroom"),
    ],
)  # fmt: skip
def test_bad_input_is_one_clear_error_with_exit_2(
    args: list[str], message: str, cli_env: dict[str, str]
) -> None:
    out = plan(args, cli_env)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert message in out.stderr and "fix:" in out.stderr


def test_no_gpu_and_nothing_named_asks_for_a_gpu(cli_env: dict[str, str]) -> None:
    out = plan(["--model", "llama-3.1-8b"], cli_env)
    if out.returncode == 0:
        pytest.skip("this machine has a GPU")
    assert out.returncode == 2 and "--simulate" in out.stderr


def test_rope_scaling_allows_longer_context(cli_env: dict[str, str]) -> None:
    data = plan_json(["--model", "qwen2.5-0.5b", "--seq-len", "65536", "--rope-scaling", "2",
                      "--method", "qlora", "--simulate", "h100"], cli_env)  # fmt: skip
    assert data["config"]["seq_len"] == 65536


@pytest.mark.slow
def test_dry_run_is_reported_beside_the_analytic_number(cli_env: dict[str, str]) -> None:
    pytest.importorskip("torch")
    data = plan_json(
        ["--model", "qwen2.5-0.5b", "--method", "lora", "--batch", "2", "--grad-ckpt",
         "--seq-len", "512", "--simulate", "l4", "--dry-run"],
        cli_env,
    )  # fmt: skip
    dry = data["dry_run"]
    assert dry["peak_allocated_gib"] > 0.5
    assert abs(dry["difference"]) < 0.10
    assert dry["analytic_allocated_gib"] == data["memory"]["allocated_gib"]
    out = plan(
        ["--model", "qwen2.5-0.5b", "--method", "lora", "--batch", "2", "--grad-ckpt",
         "--seq-len", "512", "--simulate", "l4", "--dry-run"],
        cli_env,
    )  # fmt: skip
    assert "dry run:" in out.stdout and "analytic" in out.stdout


def test_the_peft_family_is_planned_with_its_own_memory(cli_env: dict[str, str]) -> None:
    """`--method ia3|prefix|bias|freeze`: the method itself is planned, with its own trainable
    parameters and memory: tiny adapters on a 16-bit base, prefix without checkpointing (it
    cannot), bias and freeze on fp32 master weights, freeze training its top 2 of 28 layers."""
    plans = {
        method: plan_json(["--model", "qwen2.5-7b", "--method", method, "--simulate", "h200"],
                          cli_env)
        for method in ("ia3", "prefix", "bias", "freeze")
    }  # fmt: skip
    total = plans["ia3"]["model"]["params"]
    for method, out in plans.items():
        assert out["fits"] and out["config"]["method"] == method
    assert all(plans[m]["model"]["trainable_params"] < total / 1000 for m in ("ia3", "prefix"))
    assert 0.05 < plans["freeze"]["model"]["trainable_params"] / total < 0.1
    assert plans["prefix"]["config"]["grad_ckpt"] is False
    weights = {m: out["memory"]["breakdown_gib"]["weights"] for m, out in plans.items()}
    assert weights["bias"] == pytest.approx(2 * weights["ia3"], rel=0.02)  # fp32 vs bf16
    assert any("virtual" in n or "keys and values" in n for n in plans["prefix"]["memory"]["notes"])


def test_an_moe_that_fits_only_without_its_experts_lora_says_so(cli_env: dict[str, str]) -> None:
    """all-linear adapts Qwen3-30B-A3B's fused experts (~1B adapter parameters): on an
    A100-80GB nothing fits, and the suggestion names the attention-only targets, which do."""
    args = ["--model", "qwen3-30b-a3b", "--method", "qlora", "--simulate", "a100-80gb"]
    refused = plan_json(args, cli_env)
    assert not refused["fits"]
    hint = [s for s in refused["suggestions"] if "experts" in s]
    assert hint and hint[0].endswith("--targets q_proj,k_proj,v_proj,o_proj")
    attention = plan_json([*args, "--targets", "q_proj,k_proj,v_proj,o_proj"], cli_env)
    assert attention["fits"] and attention["config"]["targets"] == "q_proj,k_proj,v_proj,o_proj"
