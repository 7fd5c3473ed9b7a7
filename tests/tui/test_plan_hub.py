"""The plan wizard with a model that is only on the hub: typed as `org/name`, its config is
fetched in a worker, the missing weights show their size and the free disk, and ctrl+g
downloads them with a progress bar. Real HTTP against the local stand-in (tests/hubserver.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import ProgressBar, Static

from tests.hubserver import HubServer
from tests.tui.test_plan_wizard import open_wizard, plain, simulated, wait_until
from tests.tui.test_runs_screen import Harness
from tui.screens.plan.hub import HubPanel
from tui.screens.plan.screen import PlanWizardScreen


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    from engine.demo.tiny import build_tiny_model

    folder = build_tiny_model(tmp_path_factory.mktemp("tiny") / "m", pretrain_steps=0)
    with HubServer() as server:
        files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
        server.add_repo("org/tiny", {**files, "pytorch_model.bin": b"a duplicate"})
        yield server


@pytest.fixture
def online(hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return cache


async def test_a_hub_model_is_fetched_sized_and_downloaded_from_the_wizard(
    online: Path, hub: HubServer
) -> None:
    app = Harness(lambda: PlanWizardScreen(simulated(), model="org/tiny"))
    async with app.run_test(size=(160, 50)) as pilot:
        screen: Any = await open_wizard(pilot, planned=False)
        panel = screen.query_one(HubPanel)
        chosen = screen.query_one("#model-chosen", Static)
        await wait_until(pilot, lambda: "org/tiny" in plain(chosen))
        assert "weights not on this machine" in plain(chosen)
        await wait_until(pilot, lambda: panel.ready)
        line = plain(screen.query_one("#hub-line", Static))
        assert "kB to download" in line and "free at" in line and "ctrl+g" in line
        assert not [r for r in hub.requests("GET") if r.path.endswith(".safetensors")]
        await pilot.press("ctrl+g")
        await wait_until(pilot, lambda: "weights at" in plain(chosen), timeout=60)
        bar = screen.query_one("#hub-progress", ProgressBar)
        assert bar.total and bar.progress == bar.total
        snapshots = list(online.glob("models--org--tiny/snapshots/*/model.safetensors"))
        assert len(snapshots) == 1 and not list(online.rglob("pytorch_model.bin"))
        assert "Traceback" not in plain(chosen)
