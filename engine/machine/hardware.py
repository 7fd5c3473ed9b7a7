"""Machine detection: every GPU through NVML (one choke point, lazy init), plus CPU, RAM and disk.

A missing NVIDIA library or driver is a normal "no GPU" state with its reason, never an
exception. `NvmlBackend` reads any object that speaks the `pynvml` API: the real module, or
`engine.machine.fakenvml.FakeNvml` (tests and `--simulate`), so both paths share the parsing code.
"""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from engine.paths import existing_ancestor, runs_root

GIB = 1024**3
T = TypeVar("T")

# NVML return codes (nvml.h); pynvml exposes them as NVML_ERROR_* and NVMLError.value.
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18

_NO_GPU_REASONS = {
    NVML_ERROR_LIBRARY_NOT_FOUND: (
        "the NVIDIA driver library (libnvidia-ml.so) was not found: this machine has no NVIDIA "
        "driver, or no NVIDIA GPU"
    ),
    NVML_ERROR_DRIVER_NOT_LOADED: "the NVIDIA kernel driver is not loaded (try `nvidia-smi`)",
    NVML_ERROR_NO_PERMISSION: "no permission to talk to the NVIDIA driver",
    NVML_ERROR_LIB_RM_VERSION_MISMATCH: (
        "the NVIDIA driver library and kernel module versions differ (reboot after a driver update)"
    ),
}


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    used_memory_bytes: int | None  # None where NVML cannot tell (MIG, containers)
    name: str | None = None


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    uuid: str | None
    memory_total_bytes: int
    memory_used_bytes: int
    memory_free_bytes: int
    utilization_pct: float | None
    memory_utilization_pct: float | None
    temperature_c: float | None
    power_draw_w: float | None
    power_limit_w: float | None
    compute_capability: tuple[int, int] | None
    bf16_supported: bool | None
    pci_bus_id: str | None
    nvlink_active_links: int | None
    processes: tuple[GpuProcess, ...] = ()
    profile_id: str | None = None  # the matching built-in GPU profile, if any
    unsupported: tuple[str, ...] = ()  # fields NVML reported as not supported / unavailable
    lost: bool = False  # NVML says the GPU fell off the bus

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["memory_total_gib"] = round(self.memory_total_bytes / GIB, 3)
        data["memory_used_gib"] = round(self.memory_used_bytes / GIB, 3)
        data["memory_free_gib"] = round(self.memory_free_bytes / GIB, 3)
        data["compute_capability"] = (
            f"{self.compute_capability[0]}.{self.compute_capability[1]}"
            if self.compute_capability
            else None
        )
        data["processes"] = [asdict(p) for p in self.processes]
        data["unsupported"] = list(self.unsupported)
        return data


@dataclass(frozen=True)
class HostInfo:
    hostname: str
    os: str
    cpu_model: str
    cpu_cores: int | None  # physical
    cpu_threads: int | None  # logical
    ram_total_bytes: int
    ram_available_bytes: int
    disk_path: str
    disk_total_bytes: int | None
    disk_free_bytes: int | None
    load_avg_1m: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ram_total_gib"] = round(self.ram_total_bytes / GIB, 2)
        data["ram_available_gib"] = round(self.ram_available_bytes / GIB, 2)
        data["disk_free_gib"] = (
            round(self.disk_free_bytes / GIB, 2) if self.disk_free_bytes is not None else None
        )
        return data


@dataclass(frozen=True)
class MachineSnapshot:
    gpus: tuple[GpuInfo, ...]
    host: HostInfo
    backend: str  # "nvml" or "simulated"
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    nvml_version: str | None = None
    no_gpu_reason: str | None = None
    # p2p[i][j]: True/False where NVML answered, None where it did not. Empty when not asked.
    p2p: tuple[tuple[bool | None, ...], ...] = ()
    taken_at: float = field(default_factory=time.time)

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "simulated": self.backend == "simulated",
            "driver_version": self.driver_version,
            "cuda_driver_version": self.cuda_driver_version,
            "nvml_version": self.nvml_version,
            "no_gpu_reason": self.no_gpu_reason,
            "gpus": [g.to_dict() for g in self.gpus],
            "p2p": [list(row) for row in self.p2p],
            "host": self.host.to_dict(),
            "taken_at": self.taken_at,
        }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def read_host_info(disk_path: Path | None = None) -> HostInfo:
    import psutil  # light (a C extension), but keep the import where it is used

    vm = psutil.virtual_memory()
    probe = existing_ancestor(disk_path or runs_root())
    disk_total: int | None = None
    disk_free: int | None = None
    try:
        du = psutil.disk_usage(str(probe))
        disk_total, disk_free = int(du.total), int(du.free)
    except OSError:
        pass
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):
        load = None
    return HostInfo(
        hostname=socket.gethostname(),
        os=f"{platform.system()} {platform.release()}",
        cpu_model=_cpu_model(),
        cpu_cores=psutil.cpu_count(logical=False),
        cpu_threads=psutil.cpu_count(logical=True),
        ram_total_bytes=int(vm.total),
        ram_available_bytes=int(vm.available),
        disk_path=str(probe),
        disk_total_bytes=disk_total,
        disk_free_bytes=disk_free,
        load_avg_1m=load,
    )


def _error_code(exc: BaseException) -> int | None:
    value = getattr(exc, "value", None)
    return value if isinstance(value, int) else None


def _as_str(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _cuda_version_str(raw: int) -> str:
    """NVML encodes CUDA 12.4 as 12040."""
    return f"{raw // 1000}.{(raw % 1000) // 10}"


class NvmlBackend:
    """The one place ftui talks to NVML. Initialises lazily, once; thread-safe.

    `nvml` is the pynvml module or a stand-in with the same API. When it is None the real
    `pynvml` is imported on first use; a missing package or driver becomes `no_gpu_reason`.
    """

    backend_name = "nvml"

    def __init__(
        self,
        nvml: Any | None = None,
        *,
        simulated: bool = False,
        host_reader: Callable[[], HostInfo] | None = None,
    ) -> None:
        self._nvml: Any = nvml
        self._host_reader = host_reader or read_host_info
        self._lock = threading.Lock()
        self._initialised = False
        self._no_gpu_reason: str | None = None
        self._handles: list[Any] = []
        self._static: dict[int, dict[str, Any]] = {}
        self.backend_name = "simulated" if simulated else "nvml"

    # -- lifecycle -------------------------------------------------------------------------------
    def _ensure_init(self) -> bool:
        if self._initialised:
            return self._no_gpu_reason is None
        self._initialised = True
        if self._nvml is None:
            try:
                import pynvml

                self._nvml = pynvml
            except ImportError:
                self._no_gpu_reason = (
                    "the NVML Python binding is not installed (pip install nvidia-ml-py)"
                )
                return False
        nvml = self._nvml
        try:
            nvml.nvmlInit()
        except Exception as exc:  # NVMLError subclasses, OSError from ctypes
            code = _error_code(exc)
            reason = _NO_GPU_REASONS.get(code) if code is not None else None
            self._no_gpu_reason = reason or f"NVML failed to start: {exc}"
            return False
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except Exception as exc:
            self._no_gpu_reason = f"NVML could not count GPUs: {exc}"
            return False
        if count == 0:
            self._no_gpu_reason = "the NVIDIA driver is loaded but reports no GPUs"
            return False
        for index in range(count):
            try:
                self._handles.append(nvml.nvmlDeviceGetHandleByIndex(index))
            except Exception:
                self._handles.append(None)
        return True

    def close(self) -> None:
        with self._lock:
            if self._initialised and self._no_gpu_reason is None and self._nvml is not None:
                with contextlib.suppress(Exception):
                    self._nvml.nvmlShutdown()
            self._initialised = False
            self._handles = []
            self._static = {}
            self._no_gpu_reason = None

    # -- reading ---------------------------------------------------------------------------------
    def _field(self, missing: list[str], name: str, fn: Callable[..., T], *args: Any) -> T | None:
        """Call one NVML getter; a field NVML cannot give is recorded and becomes None."""
        try:
            return fn(*args)
        except Exception as exc:
            if _error_code(exc) == NVML_ERROR_GPU_IS_LOST:
                raise
            missing.append(name)
            return None

    def _static_info(self, index: int, handle: Any) -> dict[str, Any]:
        """Fields that never change while the driver is loaded: read once per GPU."""
        if index in self._static:
            return self._static[index]
        nvml = self._nvml
        missing: list[str] = []
        name = self._field(missing, "name", nvml.nvmlDeviceGetName, handle)
        uuid = self._field(missing, "uuid", nvml.nvmlDeviceGetUUID, handle)
        cc = self._field(
            missing, "compute_capability", nvml.nvmlDeviceGetCudaComputeCapability, handle
        )
        pci = self._field(missing, "pci_bus_id", nvml.nvmlDeviceGetPciInfo, handle)
        limit_mw = self._field(missing, "power_limit", nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
        links = self._nvlink_links(handle)
        if links is None:
            missing.append("nvlink")
        info = {
            "name": _as_str(name) if name is not None else f"GPU {index}",
            "uuid": _as_str(uuid) if uuid is not None else None,
            "cc": (int(cc[0]), int(cc[1])) if cc is not None else None,
            "pci": _as_str(getattr(pci, "busId", "")) or None if pci is not None else None,
            "power_limit_w": limit_mw / 1000.0 if limit_mw is not None else None,
            "nvlink": links,
            "missing": missing,
        }
        self._static[index] = info
        return info

    def _nvlink_links(self, handle: Any) -> int | None:
        nvml = self._nvml
        max_links = int(getattr(nvml, "NVML_NVLINK_MAX_LINKS", 18))
        enabled = int(getattr(nvml, "NVML_FEATURE_ENABLED", 1))
        active = 0
        answered = False
        for link in range(max_links):
            try:
                state = nvml.nvmlDeviceGetNvLinkState(handle, link)
            except Exception:
                # Links past the last one (or on PCIe-only cards) answer "not supported".
                if not answered:
                    return None if link == 0 else active
                break
            answered = True
            if int(state) == enabled:
                active += 1
        return active

    def _memory(self, handle: Any, missing: list[str]) -> tuple[int, int, int]:
        nvml = self._nvml
        v2 = getattr(nvml, "nvmlMemory_v2", None)
        mem = None
        if v2 is not None:
            try:
                mem = nvml.nvmlDeviceGetMemoryInfo(handle, version=v2)
            except Exception as exc:
                if _error_code(exc) == NVML_ERROR_GPU_IS_LOST:
                    raise
                mem = None  # drivers < 515 lack the v2 call: fall back to v1
        if mem is None:
            mem = self._field(missing, "memory", nvml.nvmlDeviceGetMemoryInfo, handle)
        if mem is None:
            return 0, 0, 0
        return int(mem.total), int(mem.used), int(mem.free)

    def _temperature(self, handle: Any, missing: list[str]) -> float | None:
        nvml = self._nvml
        sensor = getattr(nvml, "NVML_TEMPERATURE_GPU", 0)
        getter_v = getattr(nvml, "nvmlDeviceGetTemperatureV", None)
        if getter_v is not None:
            try:
                return float(getter_v(handle, sensor))
            except Exception as exc:
                if _error_code(exc) == NVML_ERROR_GPU_IS_LOST:
                    raise
        value = self._field(missing, "temperature", nvml.nvmlDeviceGetTemperature, handle, sensor)
        return float(value) if value is not None else None

    def _processes(self, handle: Any, missing: list[str]) -> tuple[GpuProcess, ...]:
        nvml = self._nvml
        seen: dict[int, GpuProcess] = {}
        answered = False
        for getter in (
            "nvmlDeviceGetComputeRunningProcesses",
            "nvmlDeviceGetGraphicsRunningProcesses",
        ):
            fn = getattr(nvml, getter, None)
            if fn is None:
                continue
            try:
                procs = fn(handle)
            except Exception as exc:
                if _error_code(exc) == NVML_ERROR_GPU_IS_LOST:
                    raise
                continue
            answered = True
            for proc in procs:
                pid = int(proc.pid)
                used = getattr(proc, "usedGpuMemory", None)
                if pid not in seen:
                    seen[pid] = GpuProcess(pid=pid, used_memory_bytes=int(used) if used else None)
        if not answered:
            missing.append("processes")
        return tuple(_with_process_names(list(seen.values())))

    def _gpu(self, index: int, handle: Any) -> GpuInfo:
        from profiles import match_gpu_by_device_name

        static = self._static_info(index, handle)
        missing = list(static["missing"])
        total, used, free = self._memory(handle, missing)
        util = self._field(missing, "utilization", self._nvml.nvmlDeviceGetUtilizationRates, handle)
        power_mw = self._field(missing, "power_draw", self._nvml.nvmlDeviceGetPowerUsage, handle)
        temperature = self._temperature(handle, missing)
        processes = self._processes(handle, missing)
        cc = static["cc"]
        profile = match_gpu_by_device_name(static["name"])
        return GpuInfo(
            index=index,
            name=static["name"],
            uuid=static["uuid"],
            memory_total_bytes=total,
            memory_used_bytes=used,
            memory_free_bytes=free,
            utilization_pct=float(util.gpu) if util is not None else None,
            memory_utilization_pct=float(util.memory) if util is not None else None,
            temperature_c=temperature,
            power_draw_w=power_mw / 1000.0 if power_mw is not None else None,
            power_limit_w=static["power_limit_w"],
            compute_capability=cc,
            bf16_supported=(cc[0] >= 8) if cc is not None else None,
            pci_bus_id=static["pci"],
            nvlink_active_links=static["nvlink"],
            processes=processes,
            profile_id=profile.id if profile else None,
            unsupported=tuple(dict.fromkeys(missing)),
        )

    def _lost_gpu(self, index: int) -> GpuInfo:
        static = self._static.get(index, {})
        return GpuInfo(
            index=index,
            name=static.get("name", f"GPU {index}"),
            uuid=static.get("uuid"),
            memory_total_bytes=0,
            memory_used_bytes=0,
            memory_free_bytes=0,
            utilization_pct=None,
            memory_utilization_pct=None,
            temperature_c=None,
            power_draw_w=None,
            power_limit_w=None,
            compute_capability=static.get("cc"),
            bf16_supported=None,
            pci_bus_id=static.get("pci"),
            nvlink_active_links=None,
            lost=True,
            unsupported=("all",),
        )

    def _p2p_matrix(self) -> tuple[tuple[bool | None, ...], ...]:
        nvml = self._nvml
        fn = getattr(nvml, "nvmlDeviceGetP2PStatus", None)
        n = len(self._handles)
        if fn is None or n < 2:
            return ()
        ok = int(getattr(nvml, "NVML_P2P_STATUS_OK", 0))
        rows: list[tuple[bool | None, ...]] = []
        for i, hi in enumerate(self._handles):
            row: list[bool | None] = []
            for j, hj in enumerate(self._handles):
                if i == j:
                    row.append(True)
                    continue
                try:
                    # index 0 = NVML_P2P_CAPS_INDEX_READ (pynvml defines it as a tuple by mistake)
                    row.append(int(fn(hi, hj, 0)) == ok)
                except Exception:
                    row.append(None)
            rows.append(tuple(row))
        return tuple(rows)

    def _versions(self) -> tuple[str | None, str | None, str | None]:
        nvml = self._nvml
        unused: list[str] = []
        driver = self._field(unused, "driver", nvml.nvmlSystemGetDriverVersion)
        cuda = self._field(unused, "cuda", nvml.nvmlSystemGetCudaDriverVersion)
        version = self._field(unused, "nvml", nvml.nvmlSystemGetNVMLVersion)
        return (
            _as_str(driver) if driver is not None else None,
            _cuda_version_str(int(cuda)) if cuda is not None else None,
            _as_str(version) if version is not None else None,
        )

    def snapshot(self, *, host: HostInfo | None = None, topology: bool = False) -> MachineSnapshot:
        """Read every GPU once. `topology=True` adds the P2P matrix (n² calls: not for polling)."""
        host = host or self._host_reader()
        with self._lock:
            if not self._ensure_init():
                return MachineSnapshot(
                    gpus=(), host=host, backend=self.backend_name, no_gpu_reason=self._no_gpu_reason
                )
            gpus: list[GpuInfo] = []
            for index, handle in enumerate(self._handles):
                if handle is None:
                    gpus.append(self._lost_gpu(index))
                    continue
                try:
                    gpus.append(self._gpu(index, handle))
                except Exception:
                    gpus.append(self._lost_gpu(index))
            driver, cuda, version = self._versions()
            return MachineSnapshot(
                gpus=tuple(gpus),
                host=host,
                backend=self.backend_name,
                driver_version=driver,
                cuda_driver_version=cuda,
                nvml_version=version,
                p2p=self._p2p_matrix() if topology else (),
            )


def _with_process_names(procs: list[GpuProcess]) -> list[GpuProcess]:
    if not procs:
        return procs
    import psutil

    named: list[GpuProcess] = []
    for proc in procs:
        try:
            name: str | None = psutil.Process(proc.pid).name()
        except Exception:  # gone, or a host pid seen from inside a container
            name = None
        named.append(GpuProcess(proc.pid, proc.used_memory_bytes, name))
    return named


def detect_machine(simulate: str | None = None, *, topology: bool = False) -> MachineSnapshot:
    """One snapshot of this machine, or of a simulated one (`simulate='h100x8'`)."""
    return make_backend(simulate).snapshot(topology=topology)


def make_backend(simulate: str | None = None) -> NvmlBackend:
    if simulate:
        from engine.machine.fakenvml import FakeNvml, parse_simulate_spec

        return NvmlBackend(FakeNvml.from_profiles(parse_simulate_spec(simulate)), simulated=True)
    return NvmlBackend()
