"""The real `ftui` binary: help, version, gpus (real and simulated), errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine import __version__
from tests.conftest import ftui_executable


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ftui_executable(), *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_help_lists_the_commands(cli_env: dict[str, str]) -> None:
    out = run(["--help"], cli_env)
    assert out.returncode == 0
    for command in ("gpus", "doctor", "models", "--simulate"):
        assert command in out.stdout


def test_version(cli_env: dict[str, str]) -> None:
    out = run(["--version"], cli_env)
    assert out.returncode == 0 and out.stdout.strip() == f"ftui {__version__}"


def test_python_dash_m_tui_works(cli_env: dict[str, str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tui", "--version"], env=cli_env, capture_output=True, text=True
    )
    assert out.returncode == 0 and __version__ in out.stdout


def test_gpus_on_this_machine(cli_env: dict[str, str]) -> None:
    out = run(["gpus"], cli_env)
    assert out.returncode == 0, out.stderr
    assert "RAM" in out.stdout and "CPU" in out.stdout
    data = json.loads(run(["gpus", "--json"], cli_env).stdout)
    assert set(data) >= {"gpus", "host"}
    if not data["gpus"]:
        assert data["no_gpu_reason"]
        assert "No GPU" in out.stdout and "--simulate" in out.stdout


def test_gpus_simulated_json_contract(cli_env: dict[str, str]) -> None:
    out = run(["gpus", "--simulate", "h100x8", "--json"], cli_env)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert len(data["gpus"]) == 8 and data["simulated"] is True
    for index, gpu in enumerate(data["gpus"]):
        assert gpu["index"] == index
        assert gpu["name"] == "NVIDIA H100 80GB HBM3"
        assert gpu["memory_total_gib"] == pytest.approx(79.65, abs=0.05)
        assert gpu["memory_used_gib"] < 0.1
        for key in ("uuid", "utilization_pct", "temperature_c", "power_draw_w", "power_limit_w",
                    "compute_capability", "bf16_supported", "processes"):  # fmt: skip
            assert key in gpu
    assert data["host"]["ram_total_gib"] > 0


def test_simulate_also_works_before_the_command(cli_env: dict[str, str]) -> None:
    data = json.loads(run(["--simulate", "4090x2", "gpus", "--json"], cli_env).stdout)
    assert [g["name"] for g in data["gpus"]] == ["NVIDIA GeForce RTX 4090"] * 2


def test_a_bad_simulate_spec_is_one_clear_error(cli_env: dict[str, str]) -> None:
    out = run(["gpus", "--simulate", "h100x0"], cli_env)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.startswith("ftui: error:") and "fix:" in out.stderr
    out = run(["--simulate", "tpu-v9"], cli_env)  # the app path validates before opening
    assert out.returncode == 2 and "names no known GPU" in out.stderr


def test_models_lists_the_profiles(cli_env: dict[str, str]) -> None:
    data = json.loads(run(["models", "--json"], cli_env).stdout)
    assert any(m["id"] == "llama-3.1-8b" for m in data)


@pytest.mark.parametrize("steps", ["0", "-3"])
def test_demo_refuses_a_step_count_below_one(
    cli_env: dict[str, str], isolated_home: Path, steps: str
) -> None:
    out = run(["demo", "--headless", "--steps", steps], cli_env)
    assert out.returncode == 2
    assert "1 training step or more" in out.stderr and "--steps 120" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (isolated_home / "runs").exists()  # nothing was launched
