"""The knobs of a fine-tune that decide its memory and speed: one typed, validated record.

Field names are the `ftui plan` flag names (`--rank` -> `rank`), so JSON output, run specs and
the command line all speak the same words.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from engine.errors import FtuiError

METHODS = ("full", "lora", "qlora")
# What a run trains for: next-token pre-training, supervised fine-tuning, or a preference
# objective (TRL's trainers). DPO and KTO compare with a reference model; ORPO and SimPO do not.
STAGES = ("pretrain", "sft", "dpo", "orpo", "kto", "simpo")
PREFERENCE_STAGES = ("dpo", "orpo", "kto", "simpo")
PAIRED_STAGES = ("dpo", "orpo", "simpo")  # chosen and rejected in one batch: 2 sequences each
REFERENCE_STAGES = ("dpo", "kto")
# The reference model of DPO/KTO: "auto" is the adapter-disabled base with LoRA/QLoRA (no second
# copy of the weights) and a frozen copy for a full fine-tune; "precompute" computes the
# reference log-probs over the data once before training and keeps no reference in memory.
REFERENCES = ("auto", "copy", "precompute")
DTYPES = ("bf16", "fp16", "fp32")
OPTIMIZERS = (
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "adafactor",
    "sgd",
)
ATTENTIONS = ("eager", "sdpa", "flash_attention_2")
SHARDINGS = ("none", "zero1", "zero2", "zero3", "fsdp")
OFFLOADS = ("none", "optimizer", "params")
# Module names LoRA can target in transformers' decoder models. "all-linear" = every linear
# layer of the decoder blocks (PEFT's meaning: not lm_head).
ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
ALL_LINEAR = "all-linear"
KNOWN_TARGETS = (*ATTENTION_MODULES, *MLP_MODULES, "lm_head", "embed_tokens")


class ConfigError(FtuiError):
    """A knob with an impossible value; the message names the field and the fix."""


@dataclass(frozen=True)
class TrainingConfig:
    stage: str = "sft"
    method: str = "lora"
    rank: int = 16
    alpha: int = 32
    targets: tuple[str, ...] = (ALL_LINEAR,)
    dora: bool = False
    double_quant: bool = True  # QLoRA: quantise the quantisation constants too
    # QLoRA: PEFT's prepare_model_for_kbit_training upcasts norms, embeddings and lm_head to
    # fp32 (and with them the residual stream). ftui keeps them in 16-bit unless asked.
    kbit_upcast: bool = False
    dtype: str = "bf16"  # compute dtype
    pure_bf16: bool = False  # full fine-tune: bf16 weights and optimizer states, no fp32 master
    optim: str = "adamw_torch"
    grad_ckpt: bool = True
    batch: int = 1  # micro-batch per GPU
    grad_accum: int = 1
    seq_len: int = 2048
    packing: bool = False
    attn: str = "sdpa"
    num_gpus: int = 1
    sharding: str = "none"
    offload: str = "none"
    reference: str = "auto"  # DPO/KTO: see REFERENCES

    # -- derived -------------------------------------------------------------------------------
    @property
    def tokens_per_micro_batch(self) -> int:
        return self.batch * self.seq_len

    @property
    def effective_batch(self) -> int:
        """Sequences per optimizer step across all GPUs."""
        return self.batch * self.grad_accum * self.num_gpus

    @property
    def sequences_per_sample(self) -> int:
        """Sequences one sample puts through the model: chosen and rejected for paired stages."""
        return 2 if self.stage in PAIRED_STAGES else 1

    @property
    def reference_kind(self) -> str:
        """none (no reference model), adapter (the base with the adapters disabled), copy (a
        frozen second copy of the weights) or precompute (log-probs computed before training)."""
        if self.stage not in REFERENCE_STAGES:
            return "none"
        if self.reference == "precompute":
            return "precompute"
        if self.reference == "auto" and self.is_peft:
            return "adapter"
        return "copy"

    @property
    def is_peft(self) -> bool:
        return self.method in ("lora", "qlora")

    @property
    def expanded_targets(self) -> tuple[str, ...]:
        if ALL_LINEAR in self.targets:
            return (*ATTENTION_MODULES, *MLP_MODULES)
        return self.targets

    def with_changes(self, **changes: Any) -> TrainingConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["targets"] = ",".join(self.targets)
        return data

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    # -- validation ----------------------------------------------------------------------------
    def validate(self) -> TrainingConfig:
        """Raise ConfigError naming the field and the fix; return self when all is well."""

        def choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
            if value not in allowed:
                raise ConfigError(
                    f"--{name.replace('_', '-')} {value!r} is not one of {', '.join(allowed)}",
                    f"pick one of: {', '.join(allowed)}",
                )

        choice("stage", self.stage, STAGES)
        choice("method", self.method, METHODS)
        choice("reference", self.reference, REFERENCES)
        choice("dtype", self.dtype, DTYPES)
        choice("optim", self.optim, OPTIMIZERS)
        choice("attn", self.attn, ATTENTIONS)
        choice("sharding", self.sharding, SHARDINGS)
        choice("offload", self.offload, OFFLOADS)
        for name in ("batch", "grad_accum", "seq_len", "num_gpus"):
            value = getattr(self, name)
            if value < 1:
                raise ConfigError(
                    f"--{name.replace('_', '-')} must be at least 1 (got {value})",
                    f"pass a positive --{name.replace('_', '-')}",
                )
        if self.is_peft:
            if self.rank < 1:
                raise ConfigError(
                    f"--rank must be at least 1 for {self.method} (got {self.rank})",
                    "use a LoRA rank such as 8, 16 or 64",
                )
            if self.alpha <= 0:
                raise ConfigError(f"--alpha must be positive (got {self.alpha})", "e.g. --alpha 32")
            unknown = [t for t in self.targets if t != ALL_LINEAR and t not in KNOWN_TARGETS]
            if unknown:
                raise ConfigError(
                    f"--targets: unknown module name(s) {', '.join(unknown)}",
                    f"use all-linear or a comma list of {', '.join(KNOWN_TARGETS)}",
                )
            if not self.targets:
                raise ConfigError("--targets is empty", "use all-linear or e.g. q_proj,v_proj")
        if self.dora and not self.is_peft:
            raise ConfigError("--dora needs --method lora or qlora", "drop --dora or use LoRA")
        if self.method == "qlora":
            if self.dtype == "fp32":
                raise ConfigError(
                    "--method qlora computes in 16-bit: --dtype fp32 is not a QLoRA setup",
                    "use --dtype bf16 (or fp16 on GPUs without bf16)",
                )
            if self.sharding == "zero3" and self.offload == "params":
                raise ConfigError(
                    "QLoRA's 4-bit weights cannot be offloaded by ZeRO-3 (--offload params)",
                    "use --offload optimizer, or --sharding fsdp without parameter offload",
                )
        if self.stage == "kto" and self.batch < 2:
            raise ConfigError(
                "--stage kto estimates its KL term from the other samples of a micro-batch: "
                f"--batch {self.batch} has none",
                "use --batch 2 or more",
            )
        if self.pure_bf16 and self.dtype != "bf16":
            raise ConfigError("--pure-bf16 needs --dtype bf16", "drop --pure-bf16 or use bf16")
        if self.offload == "params" and self.sharding not in ("zero3", "fsdp"):
            raise ConfigError(
                "--offload params needs parameter sharding",
                "use --sharding zero3 or fsdp with --offload params",
            )
        if self.offload == "optimizer" and self.sharding not in ("zero1", "zero2", "zero3", "fsdp"):
            raise ConfigError(
                "--offload optimizer needs DeepSpeed ZeRO or FSDP",
                "add --sharding zero2 (or zero3 / fsdp)",
            )
        if self.sharding != "none" and self.optim.startswith("paged_"):
            raise ConfigError(
                f"--optim {self.optim} (bitsandbytes paged) does not shard with {self.sharding}",
                "use adamw_torch with sharding, or drop --sharding",
            )
        return self
