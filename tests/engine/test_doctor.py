"""`ftui doctor` checks: statuses, fixes, and never a token on screen."""

from __future__ import annotations

import json
import subprocess

import pytest

from engine.machine.doctor import MISSING, OK, WARN, doctor_exit_code, run_checks, torch_cuda_build
from engine.machine.hardware import detect_machine
from tests.conftest import ftui_executable


def test_checks_cover_the_stack_and_each_has_a_status() -> None:
    checks = {c.name: c for c in run_checks(detect_machine())}
    for name in (
        "python", "torch", "transformers", "peft", "accelerate", "datasets", "deepspeed",
        "bitsandbytes", "flash-attn", "nvidia driver", "disk", "hf cache", "hf token",
    ):  # fmt: skip
        assert name in checks
        assert checks[name].status in (OK, WARN, MISSING)
        if checks[name].status != OK:
            assert checks[name].fix, name


def test_torch_build_is_read_without_importing_torch() -> None:
    version, cuda = torch_cuda_build()
    if version is None:
        pytest.skip("torch is not installed")
    assert version.startswith("2.")
    if "+cpu" in version:
        assert cuda is None


def test_no_gpu_is_a_warning_with_the_simulate_hint() -> None:
    machine = detect_machine()
    if machine.has_gpu:
        pytest.skip("this machine has a GPU")
    check = next(c for c in run_checks(machine) if c.name == "nvidia driver")
    assert check.status == WARN and "--simulate" in (check.fix or "")


def test_missing_required_package_fails_the_exit_code() -> None:
    from engine.machine.doctor import Check

    assert doctor_exit_code([Check("torch", MISSING, "not installed", "pip install torch")]) == 1
    assert doctor_exit_code([Check("flash-attn", WARN, "x", "y")]) == 0


def test_the_hf_token_is_never_printed(cli_env: dict[str, str]) -> None:
    secret = "hf_SECRETsecretSECRET1234"
    env = dict(cli_env, HF_TOKEN=secret)
    for extra in ([], ["--json"]):
        out = subprocess.run(
            [*ftui_executable(), "doctor", *extra], env=env, capture_output=True, text=True
        )
        assert secret not in out.stdout + out.stderr
        assert "configured" in out.stdout
    data = json.loads(out.stdout)
    assert next(c for c in data["checks"] if c["name"] == "hf token")["status"] == OK
