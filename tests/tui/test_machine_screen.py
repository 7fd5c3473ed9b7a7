"""The machine view, driven headless with Pilot on fake GPU backends."""

from __future__ import annotations

import time

from textual.widgets import Input, Static

from engine.machine.fakenvml import FakeDevice, FakeNvml, parse_simulate_spec
from engine.machine.hardware import NvmlBackend
from tests.conftest import fixed_host
from tui.app import FtuiApp
from tui.screens.machine.gpu_panel import GpuPanel
from tui.screens.machine.screen import MachineScreen


def simulated(spec: str) -> NvmlBackend:
    return NvmlBackend(
        FakeNvml.from_profiles(parse_simulate_spec(spec)), simulated=True, host_reader=fixed_host
    )


def no_gpu() -> NvmlBackend:
    return NvmlBackend(FakeNvml([], init_error=12), host_reader=fixed_host)


async def wait_for_polls(app: FtuiApp, pilot: object, count: int = 1) -> MachineScreen:
    screen = app.screen
    assert isinstance(screen, MachineScreen)
    deadline = time.monotonic() + 30  # generous: CI machines are sometimes busy
    while screen.polls < count and time.monotonic() < deadline:
        await pilot.pause(0.02)  # type: ignore[attr-defined]
    assert screen.polls >= count
    await pilot.pause()  # type: ignore[attr-defined]
    return screen


async def test_every_gpu_gets_a_panel() -> None:
    app = FtuiApp(simulated("h100x2"))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for_polls(app, pilot)
        panels = list(app.screen.query(GpuPanel))
        assert [p.gpu.index for p in panels] == [0, 1]
        assert "H100" in str(panels[0].border_title)
        assert "simulated" in str(app.screen.query_one("#machine-status", Static).render())


async def test_the_view_refreshes_and_follows_changes() -> None:
    fake = FakeNvml([FakeDevice(name="NVIDIA A100-SXM4-80GB", memory_total_bytes=80 * 1024**3)])
    app = FtuiApp(NvmlBackend(fake, host_reader=fixed_host), refresh_seconds=0.05)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for_polls(app, pilot)
        fake.devices[0].memory_used_bytes = 75 * 1024**3  # a training run fills the card
        screen = await wait_for_polls(app, pilot, count=3)
        panel = screen.query_one(GpuPanel)
        deadline = time.monotonic() + 30
        while panel.gpu.memory_used_bytes != 75 * 1024**3 and time.monotonic() < deadline:
            await pilot.pause(0.05)
        assert panel.gpu.memory_used_bytes == 75 * 1024**3
        assert panel.has_class("-full")


async def test_no_gpu_explains_why_and_offers_to_simulate() -> None:
    app = FtuiApp(no_gpu())
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await wait_for_polls(app, pilot)
        status = str(screen.query_one("#machine-status", Static).render())
        assert "No GPU" in status and "libnvidia-ml.so" in status and "simulate" in status
        assert not list(screen.query(GpuPanel))

        await pilot.press("s")
        await pilot.pause()
        app.screen.query_one(Input).value = "tpu-v9"
        await pilot.press("enter")
        await pilot.pause()
        assert "names no known GPU" in str(app.screen.query_one("#simulate-error", Static).render())

        app.screen.query_one(Input).value = "4090x2"
        await pilot.press("enter")
        screen = await wait_for_polls(app, pilot, count=2)
        panels = list(screen.query(GpuPanel))
        assert [p.gpu.profile_id for p in panels] == ["4090", "4090"]
