"""Smoke tests of the real `ftui` binary in a terminal: tmux sends keys, capture-pane reads."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import ftui_executable

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


class Tmux:
    def __init__(self, env: dict[str, str]) -> None:
        self.name = f"ftui-{uuid.uuid4().hex[:8]}"
        self.env = env

    def start(self, args: list[str]) -> None:
        command = " ".join(ftui_executable() + args)
        env_args = [f"-e{key}={value}" for key, value in self.env.items()
                    if key in ("FTUI_HOME", "PYTHONPATH", "HF_HUB_OFFLINE")]  # fmt: skip
        subprocess.run(
            ["tmux", "new-session", "-d", "-s", self.name, "-x", "120", "-y", "40", *env_args,
             command],
            check=True, env=self.env,
        )  # fmt: skip

    def screen(self) -> str:
        out = subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True, text=True
        )
        return out.stdout

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def wait_for(self, text: str, timeout: float = 60) -> str:
        deadline = time.time() + timeout
        screen = ""
        while time.time() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.3)
        raise AssertionError(f"{text!r} never appeared on screen:\n{screen}")

    def alive(self) -> bool:
        return subprocess.run(["tmux", "has-session", "-t", self.name],
                              capture_output=True).returncode == 0  # fmt: skip

    def kill(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


@pytest.fixture
def tmux(cli_env: dict[str, str]) -> Iterator[Tmux]:
    session = Tmux(cli_env)
    yield session
    session.kill()


def test_machine_view_of_a_simulated_box(tmux: Tmux) -> None:
    tmux.start(["--simulate", "h100x2"])
    screen = tmux.wait_for("GPU 1 · NVIDIA H100")
    assert "GPU 0 · NVIDIA H100" in screen and "simulated" in screen
    assert "Quit" in screen  # the footer shows the bindings
    tmux.keys("?")
    help_screen = tmux.wait_for("ftui help")
    assert "Machine" in help_screen and "Simulate GPUs" in help_screen
    tmux.keys("Escape")
    tmux.wait_for("GPU 1 · NVIDIA H100")
    tmux.keys("q")
    deadline = time.time() + 20
    while tmux.alive() and time.time() < deadline:
        time.sleep(0.2)
    assert not tmux.alive(), "q did not quit the app"


def test_no_gpu_offers_to_simulate(tmux: Tmux) -> None:
    tmux.start([])
    screen = tmux.wait_for("Host ·")
    if "No GPU" not in screen:
        pytest.skip("this machine has a GPU")
    tmux.keys("s")
    tmux.wait_for("Simulate a machine")
    tmux.keys("4", "0", "9", "0", "x", "2", "Enter")
    screen = tmux.wait_for("GPU 1 · NVIDIA GeForce RTX 4090")
    assert "GPU 0" in screen


@pytest.mark.slow
def test_demo_trains_live_in_the_dashboard_then_offers_chat(tmux: Tmux) -> None:
    tmux.start(["demo", "--steps", "40"])
    screen = tmux.wait_for("Stop run", timeout=400)  # the dashboard's footer
    assert "demo-" in screen  # its header names the run
    screen = tmux.wait_for("completed", timeout=400)
    assert "loss" in screen.lower()
    tmux.keys("c")
    screen = tmux.wait_for("Settings", timeout=60)  # the chat screen's footer
    tmux.keys("q")


def test_app_switches_between_machine_plan_and_runs(tmux: Tmux) -> None:
    tmux.start(["--simulate", "h100x2"])
    tmux.wait_for("GPU 1 · NVIDIA H100")
    tmux.keys("r")
    tmux.wait_for("No runs yet", timeout=30)
    tmux.keys("m")
    tmux.wait_for("GPU 1 · NVIDIA H100", timeout=30)
    tmux.keys("p")
    screen = tmux.wait_for("1 · Model", timeout=30)
    assert "4 · Setup" in screen
