"""NVML snapshot parsing through the fake backend: normal, missing library, unsupported, lost."""

from __future__ import annotations

import json
import os
import sys

import pytest

from engine.machine.fakenvml import FakeDevice, FakeNvml
from engine.machine.hardware import GIB, NvmlBackend, detect_machine
from tests.conftest import fixed_host


def _two_gpus() -> list[FakeDevice]:
    return [
        FakeDevice(
            name="NVIDIA H100 80GB HBM3",
            memory_total_bytes=81559 * 1024**2,
            memory_used_bytes=30 * GIB,
            uuid="GPU-aaaa",
            utilization_pct=97,
            temperature_c=71,
            power_draw_mw=612_345,
            power_limit_mw=700_000,
            compute_capability=(9, 0),
            nvlink_links=18,
            processes=[(os.getpid(), 29 * GIB), (999_999_999, None)],
        ),
        FakeDevice(
            name="Tesla T4",
            memory_total_bytes=15360 * 1024**2,
            compute_capability=(7, 5),
            unsupported={"temperature", "power_draw", "utilization", "processes"},
        ),
    ]


def _backend(fake: FakeNvml) -> NvmlBackend:
    return NvmlBackend(fake, host_reader=fixed_host)


def test_snapshot_reads_every_field() -> None:
    snap = _backend(FakeNvml(_two_gpus())).snapshot()
    assert snap.has_gpu and snap.no_gpu_reason is None
    assert snap.driver_version == "570.124.06"
    assert snap.cuda_driver_version == "12.8"
    h100 = snap.gpus[0]
    assert h100.name == "NVIDIA H100 80GB HBM3"
    assert h100.profile_id == "h100"
    assert h100.uuid == "GPU-aaaa"
    assert h100.memory_used_bytes == 30 * GIB
    assert h100.memory_free_bytes == h100.memory_total_bytes - 30 * GIB
    assert h100.utilization_pct == 97
    assert h100.temperature_c == 71
    assert h100.power_draw_w == pytest.approx(612.345)  # NVML reports milliwatts
    assert h100.power_limit_w == 700
    assert h100.compute_capability == (9, 0) and h100.bf16_supported is True
    assert h100.nvlink_active_links == 18
    assert h100.unsupported == ()
    by_pid = {p.pid: p for p in h100.processes}
    assert by_pid[os.getpid()].used_memory_bytes == 29 * GIB
    assert by_pid[os.getpid()].name  # named through psutil
    assert by_pid[999_999_999].used_memory_bytes is None  # NVML says N/A: never a crash


def test_unsupported_fields_become_none_and_are_listed() -> None:
    snap = _backend(FakeNvml(_two_gpus())).snapshot()
    t4 = snap.gpus[1]
    assert t4.temperature_c is None and t4.power_draw_w is None and t4.utilization_pct is None
    assert set(t4.unsupported) >= {
        "temperature",
        "power_draw",
        "utilization",
        "processes",
        "nvlink",
    }
    assert t4.bf16_supported is False  # Turing has no bf16
    data = json.loads(json.dumps(snap.to_dict()))
    assert data["gpus"][1]["temperature_c"] is None
    assert data["gpus"][1]["memory_total_gib"] == 15.0


def test_missing_driver_library_is_a_no_gpu_state() -> None:
    fake = FakeNvml([], init_error=12)  # NVML_ERROR_LIBRARY_NOT_FOUND
    snap = _backend(fake).snapshot()
    assert not snap.has_gpu
    assert "libnvidia-ml.so" in (snap.no_gpu_reason or "")


def test_driver_not_loaded_is_a_no_gpu_state() -> None:
    snap = _backend(FakeNvml([], init_error=9)).snapshot()
    assert "not loaded" in (snap.no_gpu_reason or "")


def test_missing_python_binding_is_a_no_gpu_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail
    snap = NvmlBackend(host_reader=fixed_host).snapshot()
    assert not snap.has_gpu
    assert "nvidia-ml-py" in (snap.no_gpu_reason or "")


def test_init_is_lazy_and_happens_once() -> None:
    fake = FakeNvml(_two_gpus())
    backend = _backend(fake)
    assert fake.init_calls == 0
    backend.snapshot()
    backend.snapshot()
    assert fake.init_calls == 1


def test_memory_falls_back_to_v1_on_old_drivers() -> None:
    snap = _backend(FakeNvml(_two_gpus(), memory_v2=False)).snapshot()
    assert snap.gpus[0].memory_used_bytes == 30 * GIB
    assert "memory" not in snap.gpus[0].unsupported


def test_a_lost_gpu_does_not_hide_the_others() -> None:
    devices = _two_gpus()
    devices[0].lost = True
    snap = _backend(FakeNvml(devices)).snapshot()
    assert snap.gpus[0].lost
    assert not snap.gpus[1].lost and snap.gpus[1].name == "Tesla T4"


def test_topology_reports_p2p_only_when_asked() -> None:
    backend = _backend(FakeNvml(_two_gpus()))
    assert backend.snapshot().p2p == ()
    p2p = backend.snapshot(topology=True).p2p
    assert p2p[0][0] is True and p2p[0][1] is False  # H100 <-> T4: no NVLink peer path


def test_this_machine_without_gpu_reports_why() -> None:
    snap = detect_machine()
    if snap.has_gpu:
        pytest.skip("this machine has a GPU")
    assert snap.no_gpu_reason
    assert snap.host.ram_total_bytes > 0 and snap.host.cpu_threads
