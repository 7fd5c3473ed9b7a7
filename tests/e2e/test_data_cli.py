"""The real `ftui data check`: exit codes 0/1/2, the --json contract, no traceback ever."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, ftui_executable

DATA = REPO / "tests" / "data" / "datasets"
JSON_KEYS = {
    "format", "records", "valid", "invalid", "empty", "duplicates", "lengths", "truncated_share",
    "estimated", "histogram",
}  # fmt: skip


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ftui_executable(), "data", "check", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def as_json(out: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def test_a_valid_dataset_exits_0(cli_env: dict[str, str]) -> None:
    out = run([str(DATA / "good_sharegpt.json"), "--seq-len", "64"], cli_env)
    assert out.returncode == 0, out.stderr
    for text in ("sharegpt", "3 records", "p50", "p99", "truncated", "all 3 records are valid"):
        assert text in out.stdout
    assert "estimated" in out.stdout


def test_json_contract(cli_env: dict[str, str]) -> None:
    out = run([str(DATA / "good_alpaca.jsonl"), "--seq-len", "16", "--json"], cli_env)
    assert out.returncode == 0, out.stderr
    data = as_json(out)
    assert set(data) >= JSON_KEYS
    assert (data["format"], data["records"], data["valid"], data["invalid"]) == (
        "alpaca", 3, 3, [],
    )  # fmt: skip
    assert set(data["lengths"]) >= {"p50", "p90", "p95", "p99", "max", "mean"}
    assert data["estimated"] is True and 0.0 <= data["truncated_share"] <= 1.0


def test_invalid_records_exit_1_with_lines_and_reasons(cli_env: dict[str, str]) -> None:
    path = str(DATA / "missing_fields.jsonl")
    out = run([path, "--json"], cli_env)
    assert out.returncode == 1, out.stderr
    data = as_json(out)
    assert data["valid"] == 1
    assert [(i["line"], i["reason"]) for i in data["invalid"]] == [
        (2, "missing field 'output'"),
        (3, "missing field 'instruction'"),
        (4, "missing fields 'instruction' and 'output'"),
    ]
    human = run([path], cli_env)
    assert human.returncode == 1
    assert "line 3" in human.stdout and "missing field 'instruction'" in human.stdout
    assert "--skip-invalid" in human.stdout


def test_a_long_invalid_list_is_capped_in_the_report_but_not_in_json(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    rows = [{"instruction": f"q{i}", "input": ""} for i in range(80)]
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    human = run([str(path)], cli_env)
    assert human.returncode == 1
    assert "… 30 more" in human.stdout and "line 50" in human.stdout
    assert "line 51 " not in human.stdout
    assert len(as_json(run([str(path), "--json"], cli_env))["invalid"]) == 80


def test_unusable_files_exit_2_with_the_fix(cli_env: dict[str, str]) -> None:
    out = run([str(DATA / "truncated_array.json")], cli_env)
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.startswith("ftui: error: dataset ")
    assert "line 3, column 49" in out.stderr and "\n  fix: " in out.stderr
    out = run([str(DATA / "nope.jsonl"), "--json"], cli_env)
    assert out.returncode == 2 and "does not exist" in out.stderr


@pytest.mark.parametrize(
    "name",
    sorted(p.name for p in DATA.iterdir() if not p.name.startswith(("good_", "README"))),
)
def test_no_traceback_on_any_malformed_file(cli_env: dict[str, str], name: str) -> None:
    out = run([str(DATA / name), "--json"], cli_env)
    assert "Traceback" not in out.stderr + out.stdout
    if out.returncode == 2:
        assert out.stderr.startswith("ftui: error:") and "  fix: " in out.stderr
    else:
        assert out.returncode == 1, out.stderr
        data = as_json(out)
        assert data["invalid"] and all({"line", "reason"} <= set(i) for i in data["invalid"])


def test_a_huge_record(cli_env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "huge.jsonl"
    big = {"instruction": "Summarise.", "input": "apple " * 1_000_000, "output": "Apples."}
    path.write_text(json.dumps(big) + "\n")
    data = as_json(run([str(path), "--seq-len", "4096", "--json"], cli_env))
    assert data["valid"] == 1 and data["truncated_share"] == 1.0
    assert data["longest"]["line"] == 1


def test_bad_flags_exit_2(cli_env: dict[str, str]) -> None:
    out = run([str(DATA / "good_text.jsonl"), "--seq-len", "0"], cli_env)
    assert out.returncode == 2 and "--seq-len" in out.stderr
    out = run([str(DATA / "good_text.jsonl"), "--format", "yaml"], cli_env)
    assert out.returncode == 2 and "invalid choice" in out.stderr
    out = run([str(DATA / "good_alpaca.json"), "--model", "no-such-model-xyz"], cli_env)
    assert out.returncode == 2 and "unknown model" in out.stderr


def test_with_a_local_model_tokenizer(cli_env: dict[str, str], tmp_path: Path) -> None:
    from engine.demo.tiny import build_tokenizer, tiny_config_dict

    tokenizer = build_tokenizer()
    model = tmp_path / "tiny"
    tokenizer.save_pretrained(model)
    (model / "config.json").write_text(json.dumps(tiny_config_dict(len(tokenizer))))
    path = str(DATA / "good_messages.jsonl")
    out = run([path, "--model", str(model), "--seq-len", "32", "--json"], cli_env)
    assert out.returncode == 0, out.stderr
    data = as_json(out)
    assert data["estimated"] is False and data["template"] == "chat"
    assert data["truncated_share"] > 0 and data["model"] == str(model)


def test_the_human_report_of_measured_lengths() -> None:
    from rich.console import Console

    from engine.data import check_dataset
    from engine.demo.tiny import build_tokenizer
    from tui.cli.data import print_data_report

    report = check_dataset(DATA / "good_messages.jsonl", tokenizer=build_tokenizer(), seq_len=32)
    console = Console(record=True, width=120)
    print_data_report(report, console)
    text = console.export_text()
    assert "chat template" in text and "estimated" not in text
    assert "longer than 32" in text and "token lengths" in text and "█" in text


def test_a_profile_without_local_files_falls_back_to_the_estimate(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**cli_env, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub")}
    out = run([str(DATA / "good_alpaca.json"), "--model", "llama-3.1-8b", "--json"], env)
    assert out.returncode == 0, out.stderr
    data = as_json(out)
    assert data["estimated"] is True
    assert any("estimated" in note and "no tokenizer" in note for note in data["notes"])


def test_checking_without_a_model_does_not_import_the_ml_stack(cli_env: dict[str, str]) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "tui",
            "data",
            "check",
            str(DATA / "good_alpaca.csv"),
        ],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    modules = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in out.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "engine" in modules
    assert not modules & {"torch", "transformers", "datasets", "pandas", "pyarrow", "textual"}


def test_data_without_an_action_shows_its_usage(cli_env: dict[str, str]) -> None:
    out = subprocess.run(
        [*ftui_executable(), "data"], env=cli_env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2 and "check" in out.stderr and "Traceback" not in out.stderr


# -- faults a demanding user met (issue 12) ---------------------------------------------------


def test_all_records_invalid_does_not_advise_skip_invalid(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "none_valid.jsonl"
    path.write_text('{"instruction": "q"}\n{"output": "a"}\n')
    out = run([str(path)], cli_env)
    assert out.returncode == 1, out.stderr
    assert "--skip-invalid" not in out.stdout
    assert "none of the 2 records is valid" in out.stdout
    some = tmp_path / "some_valid.jsonl"
    some.write_text('{"instruction": "q", "output": "a"}\n{"output": "a"}\n')
    assert "--skip-invalid" in run([str(some)], cli_env).stdout


def test_a_symlink_loop_is_named_as_such(cli_env: dict[str, str], tmp_path: Path) -> None:
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(tmp_path / "loop.jsonl")
    out = run([str(loop)], cli_env)
    assert out.returncode == 2
    assert "symbolic link loop" in out.stderr and "does not exist" not in out.stderr
    dangling = tmp_path / "dangling.jsonl"
    dangling.symlink_to(tmp_path / "gone.jsonl")
    out = run([str(dangling)], cli_env)
    assert out.returncode == 2 and "symbolic link to" in out.stderr


def test_files_skipped_in_a_folder_are_named(cli_env: dict[str, str], tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"instruction": "q", "output": "a"}\n')
    (folder / "notes.txt").write_text("not data\n")
    (folder / "weights.bin").write_bytes(b"\x00\x01")
    os.mkfifo(folder / "pipe.jsonl")
    (folder / "loop.json").symlink_to(folder / "loop.json")
    (folder / ".hidden.jsonl").write_text("ignored quietly\n")
    data = as_json(run([str(folder), "--json"], cli_env))
    assert data["valid"] == 1 and data["files"] == ["train.jsonl"]
    skipped = " | ".join(data["skipped"])
    for name in ("notes.txt", "weights.bin", "pipe.jsonl", "loop.json"):
        assert name in skipped
    assert "FIFO" in skipped and "symbolic link loop" in skipped and ".hidden" not in skipped
    human = run([str(folder)], cli_env)
    assert human.returncode == 0, human.stderr
    assert "notes.txt" in human.stdout and "pipe.jsonl" in human.stdout
