"""The knobs of a fine-tune that decide its memory and speed: one typed, validated record.

Field names are the `ftui plan` flag names (`--rank` -> `rank`), so JSON output, run specs and
the command line all speak the same words.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from engine.errors import FtuiError

# full / lora / qlora are what the planner's `auto` chooses among; the others are trained when
# asked (engine/run/adapters.py builds them, engine/plan/methods.py sizes them).
PLANNED_METHODS = ("full", "lora", "qlora")
# Prompt learning: trained virtual tokens (prefix: keys/values in every layer; prompt: input
# embeddings; ptuning: embeddings from a small encoder); llama-adapter: PEFT's adaption prompt.
PROMPT_METHODS = ("prefix", "prompt", "ptuning", "llama-adapter")
# Some of the model's own weights train, the rest stay frozen; the result is a whole model.
PARTIAL_METHODS = ("bias", "freeze")
METHODS = (*PLANNED_METHODS, *PROMPT_METHODS, "ia3", *PARTIAL_METHODS)
# Methods whose result is a PEFT adapter folder (adapter_config.json) on the frozen base.
ADAPTER_METHODS = ("lora", "qlora", *PROMPT_METHODS, "ia3")
LORA_INITS = ("default", "pissa", "olora", "gaussian")
BASE_BITS = (16, 8)  # 8: LoRA on an LLM.int8 base (QLoRA's 4 is --method qlora)
# What a run trains for: next-token pre-training, supervised fine-tuning, or a preference
# objective (TRL's trainers). DPO and KTO compare with a reference model; ORPO and SimPO do not.
STAGES = ("pretrain", "sft", "dpo", "orpo", "kto", "simpo")
PREFERENCE_STAGES = ("dpo", "orpo", "kto", "simpo")
PAIRED_STAGES = ("dpo", "orpo", "simpo")  # chosen and rejected in one batch: 2 sequences each
REFERENCE_STAGES = ("dpo", "kto")
# The reference model of DPO/KTO: "auto" is the adapter-disabled base with LoRA/QLoRA (no second
# copy of the weights) and a frozen copy for a full fine-tune; "copy" asks for the copy, which
# TRL makes for a full fine-tune only (with adapters it always disables them instead);
# "precompute" computes the reference log-probs over the data once before training and keeps
# no reference in memory.
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
    # -- the PEFT family beyond LoRA (engine/run/adapters.py) --
    virtual_tokens: int = 20  # prefix / prompt / ptuning / llama-adapter
    trainable_layers: int = 2  # freeze: the last N decoder layers train
    train_embeddings: bool = False  # freeze: embeddings and lm_head train too
    rslora: bool = False  # LoRA scaled by alpha/sqrt(r) instead of alpha/r
    lora_init: str = "default"  # LORA_INITS: pissa/olora start from the weights' SVD/QR
    lora_plus_ratio: float = 0.0  # LoRA+: B's learning rate = ratio x A's (0: off)
    base_bits: int = 16  # 8: LoRA on an LLM.int8 base

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
        if self.is_peft:  # TRL disables the adapters, whatever was asked (no copy)
            return "adapter"
        return "copy"

    @property
    def is_peft(self) -> bool:
        """The LoRA family (LoRA, DoRA, QLoRA, 8-bit base): low-rank adapters on linear layers."""
        return self.method in ("lora", "qlora")

    @property
    def saves_adapter(self) -> bool:
        """The result is a PEFT adapter folder, not a whole model."""
        return self.method in ADAPTER_METHODS

    @property
    def is_prompt_learning(self) -> bool:
        return self.method in PROMPT_METHODS

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
        self._validate_family()
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

    def _validate_family(self) -> None:
        """The PEFT family's knobs: each belongs to its methods."""
        if self.lora_init not in LORA_INITS:
            raise ConfigError(
                f"--init {self.lora_init!r} is not a LoRA initialisation",
                f"use one of: {', '.join(LORA_INITS[1:])}",
            )
        lora_only = {
            "--rslora": self.rslora,
            f"--init {self.lora_init}": self.lora_init != "default",
            "--lora-plus-ratio": self.lora_plus_ratio != 0.0,
            "--base-bits 8": self.base_bits == 8,
        }
        for flag, given in lora_only.items():
            if given and not self.is_peft:
                raise ConfigError(
                    f"{flag} is a LoRA option: --method {self.method} has no LoRA matrices",
                    f"use --method lora (or qlora), or drop {flag}",
                )
        if self.base_bits not in BASE_BITS:
            fix = "use --method qlora for a 4-bit base" if self.base_bits == 4 else "8 or 16"
            raise ConfigError(f"--base-bits {self.base_bits} is not 16 or 8", fix)
        if self.base_bits == 8 and self.method == "qlora":
            raise ConfigError(
                "--base-bits 8 with --method qlora: QLoRA's base is 4-bit",
                "use --method lora --base-bits 8, or --method qlora alone",
            )
        if not self.lora_plus_ratio >= 0:
            raise ConfigError(
                f"--lora-plus-ratio {self.lora_plus_ratio} is not a ratio of 0 or more",
                "use 16 (the LoRA+ paper's value), or 0 for plain LoRA",
            )
        if self.lora_init in ("pissa", "olora") and (self.method == "qlora" or self.base_bits == 8):
            raise ConfigError(
                f"--init {self.lora_init} decomposes the base's full-precision weights: "
                "a quantised base has none",
                f"use --method lora --init {self.lora_init} on a 16-bit base",
            )
        if self.is_prompt_learning and self.virtual_tokens < 1:
            raise ConfigError(
                f"--virtual-tokens must be at least 1 for {self.method} "
                f"(got {self.virtual_tokens})",
                "e.g. --virtual-tokens 20",
            )
        if self.method == "prefix" and self.grad_ckpt:
            raise ConfigError(
                "--method prefix cannot train with gradient checkpointing: a checkpointed "
                "layer runs without the trained keys and values (PEFT refuses the pair)",
                "use --no-grad-ckpt, or --method prompt / lora",
            )
        if self.method == "freeze" and self.trainable_layers < 1:
            raise ConfigError(
                f"--trainable-layers must be at least 1 (got {self.trainable_layers})",
                "e.g. --trainable-layers 2 (the last two decoder layers train)",
            )
        if self.method not in PLANNED_METHODS and self.stage not in ("sft", "pretrain"):
            raise ConfigError(
                f"--method {self.method} trains with --stage sft or pretrain, not {self.stage}",
                "use --method lora (or full / qlora) for a preference stage",
            )
        if self.method not in PLANNED_METHODS and self.sharding != "none":
            raise ConfigError(
                f"--method {self.method} is set up for one process's model: "
                f"--sharding {self.sharding} is not",
                "drop --sharding (or use --method lora / full / qlora)",
            )
