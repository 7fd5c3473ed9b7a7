"""Snapshot tests of the screens at 120x40 with deterministic data."""

from __future__ import annotations

from typing import Any

from tests.tui.test_machine_screen import no_gpu, simulated, wait_for_polls
from tui.app import FtuiApp


async def _settle(pilot: Any) -> None:
    await wait_for_polls(pilot.app, pilot)


def test_machine_view_simulated_h100x2(snap_compare: Any) -> None:
    assert snap_compare(FtuiApp(simulated("h100x2")), terminal_size=(120, 40), run_before=_settle)


def test_machine_view_without_gpu(snap_compare: Any) -> None:
    assert snap_compare(FtuiApp(no_gpu()), terminal_size=(120, 40), run_before=_settle)
