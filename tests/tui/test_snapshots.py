"""Snapshot tests of the machine view at 120x40 and 80x24 (the default terminal over SSH)
with deterministic data; each other screen has its snapshots beside its tests."""

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


def test_machine_view_simulated_h100x2_80x24(snap_compare: Any) -> None:
    assert snap_compare(FtuiApp(simulated("h100x2")), terminal_size=(80, 24), run_before=_settle)
