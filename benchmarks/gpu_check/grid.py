"""The memory and speed grid: which configurations run, in which order, and what the planner
predicts for each.

Rows are ordered most-informative-first: each of the first rows exercises a different term of
the memory model (LoRA states, full fine-tune states, activations without checkpointing,
eager attention, long-sequence logits, 4-bit weights, the out-of-memory boundary); the rows
after them vary one knob at a time around two base setups. A time budget cuts the list from
the end, so a short slot still measures the rows that teach the most.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from engine.models import ModelArch
from engine.plan.estimator import GIB, estimate_memory
from engine.plan.planner import Machine
from engine.training_config import TrainingConfig
from profiles import find_model_profile

QV = ("q_proj", "v_proj")
ALL = ("all-linear",)
# --smoke: every profile shrunk to this size, so a CPU runs the same code in seconds.
SMOKE_SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 512,
    "max_position_embeddings": 512,
}


@dataclass(frozen=True)
class Row:
    """One configuration of the grid."""

    model: str  # a model profile id
    method: str
    seq_len: int
    batch: int
    grad_ckpt: bool
    attn: str = "sdpa"
    targets: tuple[str, ...] = ALL
    rank: int = 8

    @property
    def id(self) -> str:
        adapter = ""
        if self.method != "full":
            adapter = f"-{'all' if self.targets == ALL else 'qv'}-r{self.rank}"
        ckpt = "ckpt" if self.grad_ckpt else "nockpt"
        return (
            f"{self.model}-{self.method}{adapter}-s{self.seq_len}-b{self.batch}-{ckpt}-{self.attn}"
        )

    def training_config(self, dtype: str) -> TrainingConfig:
        return TrainingConfig(
            method=self.method,
            rank=self.rank,
            alpha=2 * self.rank,
            targets=self.targets,
            dtype=dtype,
            grad_ckpt=self.grad_ckpt,
            batch=self.batch,
            seq_len=self.seq_len,
            attn=self.attn,
        ).validate()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["targets"] = list(self.targets)
        return data


# The rows that teach the most, in order (see the module docstring).
HEAD = (
    Row("llama-3.1-8b", "lora", 2048, 1, True),
    Row("llama-3.2-3b", "full", 2048, 1, True),
    Row("qwen2.5-1.5b", "lora", 2048, 4, False, targets=QV),
    Row("llama-3.1-8b", "qlora", 2048, 1, True),
    Row("qwen2.5-0.5b", "lora", 512, 4, False, attn="eager", targets=QV, rank=64),
    Row("llama-3.1-8b", "lora", 8192, 1, True, targets=QV, rank=64),
    Row("qwen2.5-14b", "lora", 2048, 1, True),
    Row("qwen2.5-14b", "qlora", 2048, 4, True, rank=64),
    Row("llama-3.2-3b", "lora", 2048, 4, False, rank=64),
    Row("qwen2.5-1.5b", "full", 512, 4, False),
    Row("llama-3.1-8b", "full", 2048, 1, True),  # fp32 master weights: the OOM boundary
    Row("qwen2.5-0.5b", "full", 2048, 4, False, attn="eager"),
)
# One knob at a time around two base setups.
BASES = (HEAD[0], Row("qwen2.5-1.5b", "full", 2048, 1, True))


def _variations(base: Row) -> list[Row]:
    out = [replace(base, seq_len=s) for s in (512, 8192)]
    out += [replace(base, batch=4), replace(base, grad_ckpt=False), replace(base, attn="eager")]
    if base.method != "full":
        out += [replace(base, rank=64), replace(base, targets=QV)]
    else:
        out += [replace(base, method="lora"), replace(base, method="qlora")]
    return out


def gpu_rows() -> list[Row]:
    rows: list[Row] = []
    for row in [*HEAD, *(v for base in BASES for v in _variations(base))]:
        if row not in rows:
            rows.append(row)
    return rows


def smoke_rows() -> list[Row]:
    """Tiny versions of the head rows' kinds: LoRA, full (eager, no checkpointing), QLoRA."""
    return [
        Row("llama-3.2-1b", "lora", 64, 2, True),
        Row("qwen2.5-0.5b", "full", 32, 2, False, attn="eager"),
        Row("llama-3.2-1b", "qlora", 64, 1, True, targets=QV, rank=4),
    ]


def model_config(profile_id: str, smoke: bool) -> dict[str, Any]:
    """The profile's config.json dict (shrunk to SMOKE_SHAPE for --smoke)."""
    profile = find_model_profile(profile_id)
    if profile is None:
        raise KeyError(f"no model profile {profile_id!r}")
    config = dict(profile.config)
    if smoke:
        config.update(SMOKE_SHAPE)
        config.pop("rope_scaling", None)  # llama3 scaling expects the real context length
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            config.pop(key, None)
    return config


def arch_for(profile_id: str, smoke: bool) -> ModelArch:
    return ModelArch(
        name=profile_id,
        source="profile",
        config=model_config(profile_id, smoke),
        profile_id=profile_id,
    )


def predicted_tokens_per_s(arch: ModelArch, config: TrainingConfig, machine: Machine) -> float:
    """The planner's tokens/s for one configuration: the one place this check names the
    throughput model, so a change of its home or signature is a one-line fix here."""
    from engine.plan.planner import throughput_tokens_per_s

    return float(throughput_tokens_per_s(arch, config, machine))


def predict(arch: ModelArch, config: TrainingConfig, machine: Machine) -> dict[str, Any]:
    """The estimator's three memory levels (no stored correction) and the planner's speed."""
    memory = estimate_memory(arch, config)
    return {
        "pred_allocated_gib": round(memory.allocated_gib, 5),
        "pred_reserved_gib": round(memory.reserved_gib, 5),
        "pred_device_gib": round(memory.device_gib, 5),
        "pred_peak_phase": memory.peak_phase,
        "pred_fits": memory.device_bytes <= machine.memory_bytes,
        "pred_tokens_per_s": round(predicted_tokens_per_s(arch, config, machine), 1),
        "params": memory.params.total,
    }


def error_pct(measured: Any, predicted: Any) -> float | None:
    """(predicted - measured) / measured in percent; None when either is missing."""
    if not isinstance(measured, (int, float)) or not isinstance(predicted, (int, float)):
        return None
    if measured <= 0:
        return None
    return round((predicted - measured) / measured * 100, 2)


def compare(result: dict[str, Any]) -> dict[str, Any]:
    """Prediction errors of one measured row (memory at three levels, tokens/s)."""
    return {
        "err_allocated_pct": error_pct(
            result.get("max_allocated_gib"), result.get("pred_allocated_gib")
        ),
        "err_reserved_pct": error_pct(
            result.get("max_reserved_gib"), result.get("pred_reserved_gib")
        ),
        "err_device_pct": error_pct(result.get("device_gib"), result.get("pred_device_gib")),
        "err_tokens_per_s_pct": error_pct(
            result.get("tokens_per_s"), result.get("pred_tokens_per_s")
        ),
    }


__all__ = ["GIB", "Row", "arch_for", "compare", "gpu_rows", "predict", "smoke_rows"]
