"""Bad input is refused up front through the real `ftui` binary: one message naming the problem
and the fix, exit code 2, nothing started in the background and no run folder left behind."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from engine.run.rundir import RunDir
from tests.e2e.runtime_helpers import ftui

# A config.json as the Hugging Face hub ships it for bert-base-uncased: an encoder.
BERT_CONFIG = {
    "architectures": ["BertForMaskedLM"],
    "model_type": "bert",
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "vocab_size": 30522,
}


def refused(out: Any, *needles: str) -> None:
    """One clear error: exit 2, `ftui: error:` and a fix, the needles named, no traceback."""
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert out.stderr.startswith("ftui: error:") and "fix:" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    for needle in needles:
        assert needle in out.stderr, (needle, out.stderr)


def no_run_folders(home: Path) -> None:
    runs = home / "runs"
    left = sorted(p.name for p in runs.iterdir()) if runs.is_dir() else []
    assert left == [], f"run folders left behind: {left}"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real tiny causal LM (not pre-trained: nothing here trains) and the demo dataset."""
    from engine.demo.tiny import build_tiny_model, write_demo_dataset

    root = tmp_path_factory.mktemp("bad-input")
    model = build_tiny_model(root / "model", pretrain_steps=0)
    return model, write_demo_dataset(root / "data.jsonl")


def config_dir(root: Path, name: str, config: dict[str, Any]) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


# -- plan ------------------------------------------------------------------------------------


def test_plan_refuses_an_encoder_model(tmp_path: Path, cli_env: dict[str, str]) -> None:
    bert = config_dir(tmp_path, "bert", BERT_CONFIG)
    out = ftui(["plan", "--model", str(bert), "--gpu", "h100"], cli_env)
    refused(out, "BertForMaskedLM", "causal")
    assert out.stdout == ""
    no_head = config_dir(tmp_path, "no-arch", {**BERT_CONFIG, "architectures": None})
    refused(ftui(["plan", "--model", str(no_head), "--gpu", "h100"], cli_env), "bert")
    t5 = {**BERT_CONFIG, "model_type": "t5", "architectures": ["T5ForConditionalGeneration"],
          "is_encoder_decoder": True}  # fmt: skip
    refused(ftui(["plan", "--model", str(config_dir(tmp_path, "t5", t5))], cli_env), "encoder")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("hidden_size", -64),
        ("hidden_size", "sixty-four"),
        ("hidden_size", 64.5),
        ("num_hidden_layers", 0),
        ("num_attention_heads", 0),
        ("num_key_value_heads", 3),  # 4 heads do not split into 3 groups
        ("vocab_size", True),
        ("intermediate_size", -1),
    ],
)
def test_plan_refuses_insane_dimensions(
    tiny: tuple[Path, Path], field: str, value: Any, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    config = json.loads((tiny[0] / "config.json").read_text())
    folder = config_dir(tmp_path, "broken", {**config, field: value})
    out = ftui(["plan", "--model", str(folder), "--gpu", "h100", "--json"], cli_env)
    refused(out, field)
    assert out.stdout == ""


def test_the_tiny_model_itself_plans(tiny: tuple[Path, Path], cli_env: dict[str, str]) -> None:
    out = ftui(["plan", "--model", str(tiny[0]), "--gpu", "h100", "--json"], cli_env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["model"]["params"] > 0


@pytest.mark.parametrize("factor", ["0", "-2", "0.5", "nan", "inf"])
def test_plan_refuses_a_rope_scaling_factor_that_is_not_one_or_more(
    factor: str, cli_env: dict[str, str]
) -> None:
    out = ftui(["plan", "--model", "qwen2.5-0.5b", "--gpu", "h100", f"--rope-scaling={factor}"],
               cli_env)  # fmt: skip
    refused(out, "--rope-scaling")


@pytest.mark.parametrize(
    "machine", [["--gpu", "h100", "--num-gpus", "17"], ["--simulate", "h100x32"]]
)
def test_more_gpus_than_the_effective_batch_says_so(
    machine: list[str], cli_env: dict[str, str]
) -> None:
    out = ftui(["plan", "--model", "qwen2.5-0.5b", *machine], cli_env)
    refused(out, "--effective-batch", "effective batch")
    assert "--sharding" not in out.stderr and "--offload" not in out.stderr
    gpus = 17 if "17" in machine else 32
    # The fix the message gives works.
    fixed = ftui(["plan", "--model", "qwen2.5-0.5b", *machine, "--effective-batch", str(gpus),
                  "--json"], cli_env)  # fmt: skip
    assert fixed.returncode == 0, fixed.stderr
    assert json.loads(fixed.stdout)["config"]["num_gpus"] == gpus


# -- launch ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--seed", "-1"], "--seed"),
        (["--max-steps", "0"], "--max-steps"),
        (["--max-steps", "-5"], "--max-steps"),
        (["--lr", "0"], "--lr"),
        (["--lr", "nan"], "--lr"),
        (["--epochs", "inf"], "--epochs"),
        (["--save-steps", "0"], "--save-steps"),
        (["--eval-fraction", "0.7"], "--eval-fraction"),
    ],
)
def test_launch_refuses_bad_flags_and_starts_nothing(
    tiny: tuple[Path, Path], flags: list[str], named: str, cli_env: dict[str, str],
    isolated_home: Path,
) -> None:  # fmt: skip
    model, data = tiny
    base = ["launch", "--model", str(model), "--data", str(data), "--device", "cpu"]
    refused(ftui([*base, *flags], cli_env), named)
    no_run_folders(isolated_home)
    refused(ftui([*base, *flags, "--dry-run"], cli_env), named)


def test_a_learning_rate_the_user_set_is_the_one_used(
    tiny: tuple[Path, Path], cli_env: dict[str, str]
) -> None:
    model, data = tiny
    out = ftui(["launch", "--model", str(model), "--data", str(data), "--device", "cpu",
                "--lr", "1e-3", "--dry-run", "--json"], cli_env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["spec"]["hyper"]["learning_rate"] == 1e-3


def write_spec(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_spec_file_gets_the_same_checks(
    tiny: tuple[Path, Path], tmp_path: Path, cli_env: dict[str, str], isolated_home: Path
) -> None:
    model, data = tiny
    cases = {
        "nonexistent": (f"model: /nonexistent\ndata: {data}\ndevice: cpu\n", "/nonexistent"),
        "seed": (f"model: {model}\ndata: {data}\ndevice: cpu\nhyper:\n  seed: -1\n", "seed"),
        "max_steps": (f"model: {model}\ndata: {data}\nhyper:\n  max_steps: 0\n", "max_steps"),
        "no model": (f"data: {data}\ndevice: cpu\n", "model"),
        "no data": (f"model: {model}\ndevice: cpu\n", "data"),
        "typo": (f"model: {model}\ndata: {data}\nmodle: x\n", "modle"),
        "nested typo": (f"model: {model}\ndata: {data}\nhyper:\n  lr: 0.1\n", "hyper.lr"),
        "bad type": (f"model: {model}\ndata: {data}\nskip_invalid: maybe\n", "skip_invalid"),
        "no data file": (f"model: {model}\ndata: {tmp_path / 'none.jsonl'}\n", "none.jsonl"),
        "encoder": (f"model: {config_dir(tmp_path, 'bert', BERT_CONFIG)}\ndata: {data}\n", "bert"),
    }
    for name, (text, named) in cases.items():
        spec = write_spec(tmp_path / f"{name.replace(' ', '-')}.yaml", text)
        out = ftui(["launch", str(spec)], cli_env)
        refused(out, named)
        assert "__init__" not in out.stderr and "positional argument" not in out.stderr, name
        no_run_folders(isolated_home)
    typo = ftui(["launch", str(tmp_path / "typo.yaml")], cli_env)
    assert "model" in typo.stderr.split("fix:")[1]  # "did you mean model?"


def test_skip_invalid_with_no_valid_record_is_refused(
    tiny: tuple[Path, Path], tmp_path: Path, cli_env: dict[str, str], isolated_home: Path
) -> None:
    bad = tmp_path / "all-invalid.jsonl"
    bad.write_text('{"instruction": "a", "output": null}\n{"instruction": "b", "output": 5}\n')
    out = ftui(["launch", "--model", str(tiny[0]), "--data", str(bad), "--device", "cpu",
                "--skip-invalid"], cli_env)  # fmt: skip
    refused(out, "no valid record")
    no_run_folders(isolated_home)


def test_slurm_writes_a_real_run_folder_and_asks_for_no_gpu_on_cpu(
    tiny: tuple[Path, Path], cli_env: dict[str, str], isolated_home: Path
) -> None:
    model, data = tiny
    base = ["launch", "--model", str(model), "--data", str(data), "--slurm"]
    out = ftui([*base, "--device", "cpu"], cli_env)
    assert out.returncode == 0, out.stderr
    assert "<run-dir>" not in out.stdout
    script_lines = out.stdout.splitlines()
    assert not any("--gpus" in line for line in script_lines if line.startswith("#SBATCH"))
    folders = list((isolated_home / "runs").iterdir())
    assert len(folders) == 1
    run = RunDir(folders[0])
    assert (run.path / "sbatch.sh").read_text() == out.stdout
    assert str(run.path) in out.stdout and run.spec.is_file()
    assert "CUDA_VISIBLE_DEVICES=" in out.stdout  # the trainer stays off any GPU of the node
    assert not run.state.exists(), "a prepared run has no process of ftui's to watch"


# -- export ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def export_env(demo_run: RunDir) -> dict[str, str]:
    repo = str(Path(__file__).resolve().parents[2])
    home = str(demo_run.path.parent.parent)
    return {**os.environ, "FTUI_HOME": home, "PYTHONPATH": repo, "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
def test_export_to_a_folder_that_cannot_be_written_is_a_message(
    demo_run: RunDir, export_env: dict[str, str], tmp_path: Path
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    for out_dir in ("/proc/ftui-export", "/sys/ftui-export/x", str(a_file / "sub")):
        refused(ftui(["export", demo_run.run_id, "--out", out_dir], export_env), out_dir)
    assert a_file.read_text() == "mine"


@pytest.mark.slow
def test_merge_force_over_an_adapter_export_loads_as_the_merged_model(
    demo_run: RunDir, export_env: dict[str, str], tmp_path: Path
) -> None:
    import torch
    import yaml
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out_dir = tmp_path / "export"
    first = ftui(["export", demo_run.run_id, "--out", str(out_dir)], export_env)
    assert first.returncode == 0, first.stderr
    assert (out_dir / "adapter_config.json").is_file()
    (out_dir / "notes.txt").write_text("mine")
    merged = ftui(["export", demo_run.run_id, "--out", str(out_dir), "--merge", "--force"],
                  export_env)  # fmt: skip
    assert merged.returncode == 0, merged.stderr
    names = {p.name for p in out_dir.iterdir()}
    assert "adapter_config.json" not in names and "adapter_model.safetensors" not in names
    assert {"model.safetensors", "config.json", "notes.txt"} <= names
    assert (out_dir / "notes.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name != "export"], "temporary folders left"
    # What loads from the folder is the base with the adapter merged in: same logits.
    ids = torch.tensor([[1, 5, 9, 12, 40]])
    base_dir = yaml.safe_load(demo_run.spec.read_text())["model_path"]
    with torch.no_grad():
        loaded = AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=torch.float32)
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        reference = PeftModel.from_pretrained(base, str(demo_run.final)).merge_and_unload()
        assert torch.allclose(loaded(ids).logits, reference(ids).logits, atol=1e-4)


@pytest.mark.slow
def test_force_never_mixes_an_export_with_a_model_ftui_did_not_write(
    demo_run: RunDir, export_env: dict[str, str], tmp_path: Path
) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "adapter_config.json").write_text("{}")
    out = ftui(["export", demo_run.run_id, "--out", str(theirs), "--merge", "--force"],
               export_env)  # fmt: skip
    refused(out, "adapter_config.json")
    assert [p.name for p in theirs.iterdir()] == ["adapter_config.json"]
