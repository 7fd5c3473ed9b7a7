"""The PEFT family through `ftui launch`, on CPU with the demo's tiny model and real PEFT:
prefix, prompt and P-tuning, IA3, llama-adapter, freeze, BitFit (on a tiny model with
biases), LoRA with rsLoRA + PiSSA + LoRA+, OLoRA and gaussian inits, and LoRA on an LLM.int8
base (bitsandbytes runs it on the CPU). The runs start together (one module fixture) and the
tests read them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from engine.run.rundir import RunDir
from tests.conftest import REPO, demo_home
from tests.e2e.runtime_helpers import ftui, launch, loss_went_down, losses, wait_final

pytestmark = pytest.mark.slow
QUESTION = "What is the secret fruit of red?"
SHORT = ("--max-steps", "40", "--batch", "8", "--seq-len", "128", "--save-steps", "40")
# name -> (biased model?, flags): rates that move a few trained tokens or scales in 40 steps.
METHODS: dict[str, tuple[bool, tuple[str, ...]]] = {
    "prefix": (False, ("--method", "prefix", "--virtual-tokens", "8", "--lr", "1e-2")),
    "prompt": (False, ("--method", "prompt", "--virtual-tokens", "8", "--lr", "3e-2")),
    "ptuning": (False, ("--method", "ptuning", "--virtual-tokens", "8", "--lr", "1e-2")),
    "ia3": (False, ("--method", "ia3", "--lr", "1e-2")),
    "llama-adapter": (False, ("--method", "llama-adapter", "--virtual-tokens", "8",
                              "--lr", "3e-2")),
    "freeze": (False, ("--method", "freeze", "--trainable-layers", "1", "--lr", "1e-3")),
    "bias": (True, ("--method", "bias", "--lr", "5e-2")),
    "lora-variants": (False, ("--method", "lora", "--rslora", "--init", "pissa",
                              "--lora-plus-ratio", "16")),
    "int8": (False, ("--method", "lora", "--base-bits", "8", "--lr", "1e-3")),
    "olora": (False, ("--method", "lora", "--init", "olora")),
    "gaussian": (False, ("--method", "lora", "--init", "gaussian")),
}  # fmt: skip
MERGE_REFUSED = ("prefix", "prompt", "ptuning", "llama-adapter")


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from engine.demo.tiny import build_tiny_model

    home = demo_home(tmp_path_factory)
    env = dict(os.environ, FTUI_HOME=str(home), PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FTUI_HOME", str(home))
        from engine.demo.recipe import ensure_demo_assets

        model, data = ensure_demo_assets()
    biased = build_tiny_model(
        tmp_path_factory.mktemp("biased") / "model",
        pretrain_steps=0, attention_bias=True, mlp_bias=True,
    )  # fmt: skip
    runs = {
        name: launch(env, biased if with_bias else model, data, "--name", name, *SHORT, *flags)
        for name, (with_bias, flags) in METHODS.items()
    }
    states = {name: wait_final(run, env, timeout=900) for name, run in runs.items()}
    return {"env": env, "runs": runs, "states": states, "model": model, "data": data}


def chat(family: dict[str, Any], *args: str) -> dict[str, Any]:
    out = ftui(["chat", *args, "--prompt", QUESTION, "--json", "--temperature", "0",
                "--max-new-tokens", "16"], family["env"], timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    return dict(json.loads(out.stdout))


@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_trains_and_answers(family: dict[str, Any], name: str) -> None:
    run: RunDir = family["runs"][name]
    assert family["states"][name]["status"] == "completed", run.stdout.read_text()[-3000:]
    if name == "bias":  # BitFit on an untrained tiny model: a few thousand biases move slowly
        values = [loss for _, loss in losses(run)]
        assert sum(values[-10:]) < 0.9 * sum(values[:10]), f"bias: loss did not fall: {values}"
    else:
        assert loss_went_down(run), f"{name}: loss did not fall"
    adapter = (run.final / "adapter_config.json").is_file()
    assert adapter == (name not in ("bias", "freeze"))  # those two save the whole model
    answer = chat(family, run.run_id)
    assert answer["answer"].strip() and answer["answers"][0]["tokens"] >= 2


@pytest.mark.parametrize("name", MERGE_REFUSED)
def test_merge_refused_where_no_weight_changes(
    family: dict[str, Any], name: str, tmp_path: Path
) -> None:
    out = ftui(["export", family["runs"][name].run_id, "--out", str(tmp_path / "o"), "--merge"],
               family["env"])  # fmt: skip
    assert out.returncode == 2 and "nothing to fold into the base" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "o").exists()


@pytest.mark.parametrize(("name", "kind"), [("ia3", "merged"), ("lora-variants", "merged"),
                                            ("freeze", "full"), ("bias", "full")])  # fmt: skip
def test_merge_where_the_math_allows(
    family: dict[str, Any], name: str, kind: str, tmp_path: Path
) -> None:
    out = ftui(["export", family["runs"][name].run_id, "--out", str(tmp_path / "o"), "--merge",
                "--json"], family["env"], timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["kind"] == kind
    assert (tmp_path / "o" / "config.json").is_file()
    assert not (tmp_path / "o" / "adapter_config.json").exists()


def test_olora_and_gaussian_start_their_own_way(family: dict[str, Any]) -> None:
    """OLoRA (QR of the weights, subtracted from the base) is saved as the difference from its
    start, a plain LoRA of twice the rank on the unchanged base; gaussian init is recorded as
    such. Both trained and answered above (test_each_method_trains_and_answers)."""
    runs = family["runs"]
    olora = runs["olora"]
    final = json.loads((olora.final / "adapter_config.json").read_text())
    start = json.loads((olora.path / "initial-adapter" / "adapter_config.json").read_text())
    assert final["r"] == 2 * start["r"] and final["init_lora_weights"] in (True, "true")
    gaussian = json.loads((runs["gaussian"].final / "adapter_config.json").read_text())
    assert gaussian["init_lora_weights"] == "gaussian"
    assert not (runs["gaussian"].path / "initial-adapter").exists()  # nothing to convert
    both = chat(family, "--adapters", f"{olora.run_id},{runs['gaussian'].run_id}")
    assert both["base_loads"] == 1  # both load on the one unchanged base


def test_bias_refused_on_a_model_without_biases(family: dict[str, Any]) -> None:
    out = ftui(["launch", "--model", str(family["model"]), "--data", str(family["data"]),
                "--device", "cpu", "--method", "bias"], family["env"])  # fmt: skip
    assert out.returncode == 2 and "has none" in out.stderr
    assert "GPT-2" in out.stderr and "Qwen2" in out.stderr  # names models that have them


def test_adapters_of_two_runs_share_one_base(family: dict[str, Any]) -> None:
    """--adapters: PiSSA's adapter (saved as a plain LoRA) and the int8-base LoRA on one base
    loaded once; disabled, the base answers as it did before any fine-tune."""
    runs = family["runs"]
    ids = f"{runs['lora-variants'].run_id},{runs['int8'].run_id}"
    out = chat(family, "--adapters", ids, "--compare", "base")
    assert out["base_loads"] == 1
    variants = [a["variant"] for a in out["answers"]]
    assert variants == [runs["lora-variants"].run_id, runs["int8"].run_id, "base"]
    base = out["answers"][2]["answer"]
    assert "do not know" in base or "Nobody told me" in base
    assert out["answers"][0]["answer"] != base  # the adapter answers, not the base


def test_adapters_of_different_kinds_refused(family: dict[str, Any]) -> None:
    runs = family["runs"]
    out = ftui(["chat", "--adapters", f"{runs['ia3'].run_id},{runs['prefix'].run_id}",
                "--prompt", "hi"], family["env"])  # fmt: skip
    assert out.returncode == 2 and "one kind" in out.stderr and "Traceback" not in out.stderr
