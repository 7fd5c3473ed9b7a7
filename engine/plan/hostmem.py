"""Host memory (CPU RAM) a training setup needs, per GPU process and per node.

Offload moves state from the GPUs to host RAM, and a node has one pool of it for all its GPUs:
- DeepSpeed ZeRO optimizer offload (ftui's runtime pins it, `pin_memory: true`): each rank's
  partition of the optimizer states, DeepSpeed's fp32 master weights and an fp32 copy of the
  gradient partition, all page-locked;
- ZeRO-3 parameter offload: each rank's partition of the 16-bit weights, pinned;
- FSDP `offload_params`: each rank's shard of the weights and gradients (FSDP pins both) and,
  because the optimizer then steps on the CPU, its states (ordinary pageable memory);
- every training process: torch, the CUDA libraries, transformers, the tokenizer and the data
  loader (`PROCESS_BASELINE_BYTES`, an assumption from typical resident sizes).

Pinned memory cannot be swapped out: a plan whose node total exceeds the RAM does not run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

GIB = 1024**3
GPUS_PER_NODE = 8
# Resident memory of one training process besides offloaded state (CUDA context on the host
# side, torch, transformers, the tokenizer, data-loader workers): typical, not measured here.
PROCESS_BASELINE_BYTES = 3 * GIB
# Share of the node's RAM a plan may use: the OS, page cache and other processes need the rest.
HOST_HEADROOM = 0.90


@dataclass(frozen=True)
class HostMemory:
    """Host RAM of one GPU's process, by part, and what the node needs in all."""

    pinned: dict[str, int] = field(default_factory=dict)  # page-locked, per process
    pageable: dict[str, int] = field(default_factory=dict)  # ordinary memory, per process
    gpus_per_node: int = 1

    @property
    def per_gpu_bytes(self) -> int:
        return sum(self.pinned.values()) + sum(self.pageable.values())

    @property
    def pinned_bytes(self) -> int:
        return sum(self.pinned.values())

    @property
    def offloaded_bytes(self) -> int:
        """Per process, without the process baseline: what offload put there."""
        return self.per_gpu_bytes - self.pageable.get("process", 0)

    @property
    def per_node_bytes(self) -> int:
        return self.per_gpu_bytes * self.gpus_per_node

    def to_dict(self) -> dict[str, Any]:
        return {
            "per_gpu_gib": round(self.per_gpu_bytes / GIB, 3),
            "per_node_gib": round(self.per_node_bytes / GIB, 3),
            "pinned_per_node_gib": round(self.pinned_bytes * self.gpus_per_node / GIB, 3),
            "gpus_per_node": self.gpus_per_node,
            "pinned_per_gpu_gib": {k: round(v / GIB, 3) for k, v in self.pinned.items()},
            "pageable_per_gpu_gib": {k: round(v / GIB, 3) for k, v in self.pageable.items()},
        }


def gpus_per_node(num_gpus: int) -> int:
    return max(1, min(num_gpus, GPUS_PER_NODE))


def host_memory(
    *,
    num_gpus: int,
    sharding: str,
    offload: str,
    optimizer_states: float,
    master_weights: float,
    gradients_fp32: float,
    weights: float,
    gradients: float,
) -> HostMemory:
    """Host RAM per process for one setup. Every size is already this rank's share (divided
    by the GPU count where the sharding divides it)."""
    pinned: dict[str, float] = {}
    pageable: dict[str, float] = {"process": PROCESS_BASELINE_BYTES}
    deepspeed = sharding.startswith("zero")
    if deepspeed and offload in ("optimizer", "params"):
        pinned["optimizer_states"] = optimizer_states + master_weights
        pinned["gradients"] = gradients_fp32
        if offload == "params" and sharding == "zero3":
            pinned["weights"] = weights
    elif sharding == "fsdp" and offload == "params":
        pinned["weights"] = weights
        pinned["gradients"] = gradients
        pageable["optimizer_states"] = optimizer_states + master_weights
    return HostMemory(
        pinned={k: int(v) for k, v in pinned.items() if v},
        pageable={k: int(v) for k, v in pageable.items() if v},
        gpus_per_node=gpus_per_node(num_gpus),
    )


def host_ram_fits(host: HostMemory, node_ram_bytes: int) -> bool:
    return host.per_node_bytes <= HOST_HEADROOM * node_ram_bytes


__all__ = [
    "GPUS_PER_NODE",
    "HOST_HEADROOM",
    "PROCESS_BASELINE_BYTES",
    "HostMemory",
    "gpus_per_node",
    "host_memory",
    "host_ram_fits",
]
