"""Shared fixtures: a fixed host, fake NVML machines, an isolated FTUI_HOME."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.machine.hardware import HostInfo

REPO = Path(__file__).resolve().parent.parent
GIB = 1024**3


def ftui_executable() -> list[str]:
    """The installed console script, else `python -m tui` with this interpreter."""
    script = Path(sys.executable).with_name("ftui")
    if script.exists():
        return [str(script)]
    found = shutil.which("ftui")
    return [found] if found else [sys.executable, "-m", "tui"]


def fixed_host() -> HostInfo:
    return HostInfo(
        hostname="gpu-box",
        os="Linux 6.8",
        cpu_model="AMD EPYC 9654 96-Core Processor",
        cpu_cores=96,
        cpu_threads=192,
        ram_total_bytes=1024 * GIB,
        ram_available_bytes=900 * GIB,
        disk_path="/data",
        disk_total_bytes=4000 * GIB,
        disk_free_bytes=3000 * GIB,
        load_avg_1m=1.5,
    )


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "ftui-home"
    monkeypatch.setenv("FTUI_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


@pytest.fixture
def cli_env(isolated_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["FTUI_HOME"] = str(isolated_home)
    env["PYTHONPATH"] = str(REPO)
    return env


def demo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The FTUI_HOME the tests that train the demo share: its tiny model is built once."""
    home = tmp_path_factory.getbasetemp() / "demo-ftui-home"
    home.mkdir(exist_ok=True)
    return home


def train_demo(tmp_path_factory: pytest.TempPathFactory, max_steps: int | None = None) -> Any:
    """The demo spec trained through the real runtime in `demo_home`; the completed RunDir."""
    from engine.demo.recipe import demo_spec
    from engine.run.operations import launch, wait

    with pytest.MonkeyPatch.context() as env:
        env.setenv("FTUI_HOME", str(demo_home(tmp_path_factory)))
        env.setenv("HF_HUB_OFFLINE", "1")
        run = launch(demo_spec() if max_steps is None else demo_spec(max_steps=max_steps))
        state = wait(run, timeout=600)
    assert state["status"] == "completed", run.stdout.read_text()[-3000:]
    return run


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The demo trained once per test session, 120 steps (checkpoints 80 and 120), for the
    chat tests, which only read it."""
    return train_demo(tmp_path_factory, max_steps=120)
