"""A stand-in for the `pynvml` module: same calls, same error protocol, scripted devices.

Used by tests (missing library, unsupported fields, lost GPUs) and by `--simulate SPEC`
(plan for 8×H100 before renting them). `engine.machine.hardware.NvmlBackend` reads it exactly as it
reads the real library, so the simulated machine goes through the real parsing code.
"""

from __future__ import annotations

import difflib
import re
import zlib
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from engine.errors import SimulateSpecError
from profiles import GpuProfile, find_gpu_profile, gpu_profiles

NVML_SUCCESS = 0
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_P2P_STATUS_OK = 0
NVML_P2P_STATUS_NOT_SUPPORTED = 5
MAX_SIMULATED_GPUS = 64


class NVMLError(Exception):
    """Mirrors pynvml.NVMLError: the NVML return code is in `.value`."""

    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


@dataclass
class FakeDevice:
    name: str
    memory_total_bytes: int
    memory_used_bytes: int = 0
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    utilization_pct: int = 0
    memory_utilization_pct: int = 0
    temperature_c: int = 32
    power_draw_mw: int = 60_000
    power_limit_mw: int = 300_000
    compute_capability: tuple[int, int] = (8, 0)
    pci_bus_id: str = "00000000:00:00.0"
    nvlink_links: int = 0  # 0 = no NVLink (NVML answers "not supported")
    processes: list[tuple[int, int | None]] = field(default_factory=list)
    unsupported: set[str] = field(default_factory=set)  # field names that raise NOT_SUPPORTED
    lost: bool = False

    @classmethod
    def from_profile(cls, profile: GpuProfile, index: int) -> FakeDevice:
        major, minor = profile.compute_capability_tuple
        links = 0
        if profile.nvlink_gbs > 0:
            links = 12 if profile.architecture == "Ampere" else 18
        return cls(
            name=profile.nvml_names[0] if profile.nvml_names else profile.name,
            memory_total_bytes=profile.memory_total_bytes,
            memory_used_bytes=4 * 1024 * 1024,
            uuid=f"GPU-5151a7ed-{index:04x}-4000-8000-{zlib.crc32(profile.id.encode()):012x}",
            temperature_c=30 + index % 4,
            power_draw_mw=int(profile.tdp_w * 1000 * 0.1),
            power_limit_mw=int(profile.tdp_w * 1000),
            compute_capability=(major, minor),
            pci_bus_id=f"00000000:{0x18 + index * 0x10:02X}:00.0",
            nvlink_links=links,
        )


class FakeNvml:
    """Implements the subset of the pynvml API that ftui calls."""

    NVMLError = NVMLError
    NVML_TEMPERATURE_GPU = 0
    NVML_FEATURE_ENABLED = 1
    NVML_NVLINK_MAX_LINKS = 18
    NVML_P2P_STATUS_OK = NVML_P2P_STATUS_OK
    nvmlMemory_v2 = 0x02000028

    def __init__(
        self,
        devices: list[FakeDevice],
        *,
        init_error: int | None = None,
        driver_version: str = "570.124.06",
        cuda_driver_version: int = 12080,
        memory_v2: bool = True,
    ) -> None:
        self.devices = devices
        self.init_error = init_error
        self.driver_version = driver_version
        self.cuda_driver_version = cuda_driver_version
        self.memory_v2 = memory_v2
        self.init_calls = 0

    @classmethod
    def from_profiles(cls, profiles: list[GpuProfile]) -> FakeNvml:
        return cls([FakeDevice.from_profile(p, i) for i, p in enumerate(profiles)])

    # -- helpers -------------------------------------------------------------------------------
    def _dev(self, handle: Any, field_name: str) -> FakeDevice:
        device: FakeDevice = self.devices[handle]
        if device.lost:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        if field_name in device.unsupported:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return device

    # -- the pynvml API ------------------------------------------------------------------------
    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise NVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        return None

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver_version

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return self.cuda_driver_version

    def nvmlSystemGetNVMLVersion(self) -> bytes:
        return b"12." + self.driver_version.encode()

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> str:
        return self._dev(handle, "name").name

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return self._dev(handle, "uuid").uuid

    def nvmlDeviceGetCudaComputeCapability(self, handle: int) -> tuple[int, int]:
        return self._dev(handle, "compute_capability").compute_capability

    def nvmlDeviceGetPciInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(busId=self._dev(handle, "pci_bus_id").pci_bus_id)

    def nvmlDeviceGetMemoryInfo(self, handle: int, version: int | None = None) -> SimpleNamespace:
        if version is not None and not self.memory_v2:
            raise NVMLError(NVML_ERROR_FUNCTION_NOT_FOUND)
        d = self._dev(handle, "memory")
        return SimpleNamespace(
            total=d.memory_total_bytes,
            used=d.memory_used_bytes,
            free=d.memory_total_bytes - d.memory_used_bytes,
        )

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        d = self._dev(handle, "utilization")
        return SimpleNamespace(gpu=d.utilization_pct, memory=d.memory_utilization_pct)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        return self._dev(handle, "temperature").temperature_c

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return self._dev(handle, "power_draw").power_draw_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: int) -> int:
        return self._dev(handle, "power_limit").power_limit_mw

    def nvmlDeviceGetNvLinkState(self, handle: int, link: int) -> int:
        d = self._dev(handle, "nvlink")
        if link >= d.nvlink_links:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return self.NVML_FEATURE_ENABLED

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[SimpleNamespace]:
        d = self._dev(handle, "processes")
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in d.processes]

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: int) -> list[SimpleNamespace]:
        self._dev(handle, "processes")
        return []

    def nvmlDeviceGetP2PStatus(self, handle1: int, handle2: int, index: int) -> int:
        a, b = self._dev(handle1, "p2p"), self._dev(handle2, "p2p")
        both_nvlink = a.nvlink_links > 0 and b.nvlink_links > 0
        return NVML_P2P_STATUS_OK if both_nvlink else NVML_P2P_STATUS_NOT_SUPPORTED


_SPEC_COUNT = re.compile(r"^(?P<name>.+?)\s*[x×*]\s*(?P<count>\d+)$", re.IGNORECASE)


def parse_simulate_spec(spec: str) -> list[GpuProfile]:
    """'h100x8' -> 8 H100 profiles; '4090' -> one; 'a100-80gbx2' -> two.

    Raises SimulateSpecError naming the known ids.
    """
    text = spec.strip()
    if not text:
        raise SimulateSpecError("empty --simulate spec", _spec_fix(""))
    profile = find_gpu_profile(text)
    count = 1
    if profile is None:
        match = _SPEC_COUNT.match(text)
        if match:
            profile = find_gpu_profile(match.group("name"))
            count = int(match.group("count"))
            if profile is not None and not 1 <= count <= MAX_SIMULATED_GPUS:
                raise SimulateSpecError(
                    f"--simulate {spec!r}: GPU count must be between 1 and {MAX_SIMULATED_GPUS}",
                    f"use e.g. `{profile.id}x8`",
                )
    if profile is None:
        raise SimulateSpecError(f"--simulate {spec!r} names no known GPU", _spec_fix(text))
    return [profile] * count


def _spec_fix(text: str) -> str:
    ids = [p.id for p in gpu_profiles()]
    head = re.split(r"[x×*]\d+$", text.lower())[0] if text else ""
    close = difflib.get_close_matches(head, ids, n=3, cutoff=0.4)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return (
        f"{hint}a spec is a GPU id with an optional xN count, e.g. h100x8; known ids: "
        + ", ".join(ids)
    )
