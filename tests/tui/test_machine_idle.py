"""The machine view after a GPU run ended: how long the GPUs have been idle, and the money."""

from __future__ import annotations

import time

from textual.widgets import Static

from engine.run.cost import machine_idle
from engine.run.rundir import create_run_dir, write_json_atomic
from tests.tui.test_machine_screen import simulated, wait_for_polls
from tui.app import FtuiApp


async def test_the_machine_view_says_how_long_the_gpus_have_been_idle() -> None:
    run = create_run_dir("h100-run")
    (run.path / "spec.yaml").write_text(
        "model: m\ndata: d.jsonl\ndevice: cuda\ntraining:\n  num_gpus: 2\nbudget:\n  price: 3.0\n"
    )
    ended = time.time() - 2 * 3600
    write_json_atomic(run.state, {"status": "completed", "run_id": run.run_id,
                                  "host": "gpu-box", "finished_at": ended})  # fmt: skip
    idle = machine_idle(host="gpu-box")
    assert idle is not None and idle.run_id == run.run_id and idle.usd_per_hour == 6.0
    app = FtuiApp(simulated("h100x2"))
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await wait_for_polls(app, pilot)
        text = str(screen.query_one("#machine-idle", Static).render())
        assert "GPUs idle for 2h 00m" in text and "$12.00 so far" in text, text
