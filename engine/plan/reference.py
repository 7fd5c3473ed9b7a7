"""Measured fine-tuning runs (CSVs of published benchmarks) as checks of the memory estimator
and of the speed model.

The CSV format: one row per measured run, with the model's architecture in short form
(`h=4096,L=32,H=32,kv=8,ffn=14336,V=32000,tied=0`), the setup, and the peak with the metric it
measured (torch allocated, torch reserved, or nvidia-smi). `comparable_rows` keeps the rows
whose stack is ftui's own (HF Trainer / PEFT, stock kernels, full / LoRA / QLoRA) and turns
each into (architecture, TrainingConfig, metric, measured GiB). `throughput_rows` does the same
for the tokens/s CSV, with the same column parsing, and marks the rows that can check ftui's
own speed (stock HF/PyTorch, no fused kernels, token counts that mean real compute).
"""

from __future__ import annotations

import csv
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from engine.models import ModelArch
from engine.plan.estimator import DEFAULT_CALIBRATION, GIB, Calibration, estimate_memory
from engine.plan.throughput import ThroughputCalibration
from engine.training_config import TrainingConfig

# Architectures whose (pre-transformers-5) modeling code computed the loss on compute-dtype logits.
_NO_UPCAST_TYPES = frozenset({"gpt_bigcode", "bloom"})
HF_STACK_SOURCES = ("foundation-model-stack/fms-acceleration", "huggingface/peft")
FUSED_MARKERS = ("fused", "liger", "unsloth", "foak")
# Non-gated MLPs (two linears) and their module names.
_MODEL_TYPES = {
    "santacoder": "gpt_bigcode",
    "bloom": "bloom",
    "mixtral": "mixtral",
    "mistral": "mistral",
    "llama": "llama",
}
_TARGET_NAMES = {
    "q": "q_proj",
    "k": "k_proj",
    "v": "v_proj",
    "o": "o_proj",
    "q_proj": "q_proj",
    "k_proj": "k_proj",
    "v_proj": "v_proj",
    "o_proj": "o_proj",
    "gate_proj": "gate_proj",
    "up_proj": "up_proj",
    "down_proj": "down_proj",
    "c_attn": "q_proj",  # gpt_bigcode's fused qkv projection
    "query_key_value": "q_proj",
}


@dataclass(frozen=True)
class ReferenceRow:
    row_id: str
    model: str
    arch: ModelArch
    config: TrainingConfig
    metric: str  # allocated / reserved / device
    measured_gib: float | None  # None for OOM rows
    oom: bool
    gpu_memory_gib: float | None
    extra_device_gib: float | None  # nvidia-smi peak when the row also gives it
    # The loss code path of the measured stack (engine.plan.estimator.LOSS_PATHS).
    loss_path: str = "v5"


@dataclass(frozen=True)
class Comparison:
    row: ReferenceRow
    predicted_gib: float
    error: float | None  # (predicted - measured) / measured; None for OOM rows
    oom_predicted: bool | None  # for OOM rows: does the estimate exceed the card?


def _parse_arch(text: str, hf_id: str, model: str) -> dict[str, object] | None:
    fields = dict(re.findall(r"(\w+)=([\w.]+)", text))
    if not {"h", "L", "H", "V"} <= set(fields):
        return None
    heads = int(fields["H"])
    config: dict[str, object] = {
        "hidden_size": int(fields["h"]),
        "num_hidden_layers": int(fields["L"]),
        "num_attention_heads": heads,
        "num_key_value_heads": int(fields.get("kv", heads)),
        "intermediate_size": int(fields.get("ffn", 4 * int(fields["h"]))),
        "vocab_size": int(fields["V"]),
        "tie_word_embeddings": fields.get("tied", "0") == "1",
    }
    model_type = next((t for key, t in _MODEL_TYPES.items() if key in model.lower()), "llama")
    config["model_type"] = model_type
    if "experts" in fields:
        config["num_local_experts"] = int(fields["experts"])
        top = re.search(r"top(\d+)", text)
        config["num_experts_per_tok"] = int(top.group(1)) if top else 2
    return config


def _loss_path(source: str, model_type: str) -> str:
    """The fms benchmarks ran transformers 4.4x (llama-family models upcast logits in the
    model and copied them shifted); the PEFT method comparison runs a transformers 4.5x with
    the shared, upcasting loss function, like transformers 5."""
    if model_type in _NO_UPCAST_TYPES:
        return "compute"
    return "legacy" if source.startswith("foundation-model-stack") else "v5"


def _targets(text: str) -> tuple[str, ...] | None:
    text = text.lower().strip()
    if not text:
        return None
    if text.startswith(("all", "*_proj")):
        return ("all-linear",)
    names: list[str] = []
    for part in re.split(r"[,|\s]+", text):
        name = _TARGET_NAMES.get(part)
        if name is None:
            return None
        if name not in names:
            names.append(name)
    return tuple(names)


def _metric(text: str) -> str | None:
    text = text.lower()
    if "nvidia-smi" in text:
        return "device"
    if "reserved" in text:
        return "reserved"
    if "max_memory_allocated" in text or "tracemalloc" in text:
        return "allocated"
    return None


def _gpu_gib(text: str) -> float | None:
    match = re.search(r"(\d+)\s*GB", text)
    return float(match.group(1)) * 1e9 / GIB if match else None


def _row_config(row: dict[str, str], seq_len: int | None = None) -> TrainingConfig | None:
    """The row's setup; both CSVs share these columns (`seq_len` for rows that leave it blank)."""
    method = row["method"]
    dora = method == "dora"
    if dora:
        method = "lora"
    if method not in ("full", "lora", "qlora"):
        return None
    dtype_mode = row["dtype_mode"].lower()
    if "bf16" in dtype_mode or "bfloat16" in dtype_mode:
        dtype = "bf16"
    elif "float16" in dtype_mode or "fp16" in dtype_mode:
        dtype = "fp16"
    else:
        dtype = "fp32"
    pure = method == "full" and "pure" in dtype_mode and dtype == "bf16"
    targets: tuple[str, ...] = ("all-linear",)
    rank = 16
    if method != "full":
        parsed = _targets(row["lora_targets"])
        if parsed is None:
            return None
        targets = parsed
        rank = int(row["lora_rank"] or 8)
    attn_text = row["attention_impl"].lower()
    attn = (
        "flash_attention_2" if "flash" in attn_text else "eager" if "eager" in attn_text else "sdpa"
    )
    parallel = row["parallelism"].lower()
    num_gpus = int(row["num_gpus"] or 1)
    sharding = "none"
    if "fsdp" in parallel:
        sharding = "fsdp"
    elif "deepspeed" in parallel:
        sharding = "zero3" if num_gpus > 1 else "none"
    offload_text = row["cpu_offload"].lower()
    offload = (
        "params" if "param" in offload_text else "optimizer" if "optim" in offload_text else "none"
    )
    # prepare_model_for_kbit_training upcasts the non-quantised parameters; fms's
    # accelerated-peft plugin keeps them 16-bit for the llama-family models it patches.
    plugin = "accelerated-peft" in row["extra_opts"].lower()
    llama_family = any(k in row["model"].lower() for k in ("llama", "mistral", "mixtral"))
    return TrainingConfig(
        kbit_upcast=method == "qlora" and not (plugin and llama_family),
        offload=offload,
        method=method,
        rank=rank,
        alpha=2 * rank,
        targets=targets,
        dora=dora,
        dtype=dtype,
        pure_bf16=pure,
        optim="adamw_torch",
        grad_ckpt=row["grad_ckpt"].lower().startswith(("yes", "true")),
        batch=int(row["micro_batch_size"]),
        seq_len=seq_len or int(row["seq_len"]),
        attn=attn,
        num_gpus=num_gpus,
        sharding=sharding,
    )


def comparable_rows(csv_path: Path) -> tuple[list[ReferenceRow], list[tuple[str, str]]]:
    """(rows on ftui's stack, [(row id, why excluded)] for the rest)."""
    kept: list[ReferenceRow] = []
    excluded: list[tuple[str, str]] = []
    with csv_path.open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            rid = row["id"]
            if row["source"] not in HF_STACK_SOURCES:
                excluded.append((rid, f"other training stack ({row['source']})"))
                continue
            if any(m in row["extra_opts"].lower() for m in FUSED_MARKERS):
                excluded.append((rid, "fused third-party kernels"))
                continue
            if row["data_kind"] not in ("measured", "measured_oom"):
                excluded.append((rid, f"data kind {row['data_kind']}"))
                continue
            config = _row_config(row)
            if config is None:
                excluded.append((rid, f"method/targets outside ftui ({row['method']})"))
                continue
            arch_config = _parse_arch(row["arch"], row["hf_model_id"], row["model"])
            if arch_config is None:
                excluded.append((rid, "architecture not given in the row"))
                continue
            metric = _metric(row["peak_metric"])
            if metric is None:
                excluded.append((rid, "metric not stated"))
                continue
            if arch_config["model_type"] in ("t5", "mt5"):
                excluded.append((rid, "encoder-decoder model"))
                continue
            oom = row["status"].lower().startswith("oom")
            alt = re.search(r"nvidia_smi_peak_MiB=([\d.]+)", row["alt_metrics"])
            arch = ModelArch(
                name=row["model"],
                source="reference",
                config=arch_config,
                hf_id=row["hf_model_id"],
            )
            kept.append(
                ReferenceRow(
                    row_id=rid,
                    model=row["model"],
                    arch=arch,
                    config=config,
                    metric=metric,
                    measured_gib=None if oom or not row["peak_gib"] else float(row["peak_gib"]),
                    oom=oom,
                    gpu_memory_gib=_gpu_gib(row["gpu"]),
                    extra_device_gib=float(alt.group(1)) / 1024 if alt else None,
                    loss_path=_loss_path(row["source"], arch.model_type),
                )
            )
    return kept, excluded


def compare(
    rows: list[ReferenceRow], calibration: Calibration = DEFAULT_CALIBRATION
) -> list[Comparison]:
    out: list[Comparison] = []
    for row in rows:
        estimate = estimate_memory(row.arch, row.config, calibration, loss_path=row.loss_path)
        predicted = {
            "allocated": estimate.allocated_gib,
            "reserved": estimate.reserved_gib,
            "device": estimate.device_gib,
        }[row.metric]
        if row.oom or row.measured_gib is None:
            fits = row.gpu_memory_gib is not None and estimate.device_gib <= row.gpu_memory_gib
            out.append(Comparison(row, predicted, None, not fits))
        else:
            error = (predicted - row.measured_gib) / row.measured_gib
            out.append(Comparison(row, predicted, error, None))
    return out


def summary(comparisons: list[Comparison]) -> dict[str, float]:
    errors = [abs(c.error) for c in comparisons if c.error is not None]
    return {
        "rows": float(len(errors)),
        "median_abs_error": statistics.median(errors) if errors else 0.0,
        "max_abs_error": max(errors) if errors else 0.0,
        "oom_rows": float(sum(1 for c in comparisons if c.error is None)),
        "oom_predicted": float(sum(1 for c in comparisons if c.oom_predicted)),
    }


# -- throughput rows -------------------------------------------------------------------------

# Which profile each source's GPU text means (fms's "a100_80gb" file: SXM nodes with NVLink).
_GPU_IDS = (
    ("a100-sxm4-40gb", "a100-40gb"),
    ("a100", "a100-80gb"),
    ("l40s", "l40s"),
    ("l40", "l40"),
    ("h100", "h100"),
    ("rtx a6000", "a6000"),
    ("a10g", "a10g"),
    ("4090", "4090"),
)
# The training loop behind each source, as the error table groups them.
_STACKS = {
    "fms-acceleration": "HF Trainer",
    "peft-method-comparison": "PyTorch loop",
    "NeMo AutoModel perf summary": "NeMo (TE kernels)",
}
# fms-acceleration's stock setups (no plugin; HF/PEFT bitsandbytes; bnb loading plugin only).
_STOCK_FMS = ("none", "baseline-peft-bnb", "accelerated-peft-bnb")
_KERNEL_MARKERS = (*FUSED_MARKERS, "padding-free", "multipack", "scattermoe", "megablocks")
# PEFT comparison experiments that change what a LoRA step computes (or that ftui cannot run).
_LORA_VARIANTS = ("bdlora", "lorafa", "mica", "-ff")


@dataclass(frozen=True)
class ThroughputRow:
    row_id: str
    source: str
    stack: str  # the training loop (HF Trainer, a plain PyTorch loop, torchtune, NeMo)
    model: str
    arch: ModelArch
    config: TrainingConfig  # seq_len = tokens per sequence the GPU computed
    gpu: str  # GPU profile id
    measured_tokens_per_s: float  # the whole job (all GPUs)
    comparable: bool  # ftui's own stack, stock kernels, token counts that mean real compute
    why_not: str = ""  # for rows that are not comparable


def _tokens_per_sequence(row: dict[str, str]) -> int | None:
    if row["seq_len"].strip().isdigit() and "packed" in row["seq_len_kind"].lower():
        return int(row["seq_len"])
    try:  # variable lengths: the run's counted tokens over the sequences it trained
        tokens = float(row["tokens_in_run_total"])
        sequences = float(row["optimizer_steps"]) * float(row["global_batch_samples"])
    except ValueError:
        return int(row["seq_len"]) if row["seq_len"].strip().isdigit() else None
    return round(tokens / sequences) if sequences > 0 else None


def _not_comparable(row: dict[str, str], stack: str) -> str:
    """Why a row cannot check ftui's own speed ("" when it can)."""
    opts = row["extra_opts"].lower()
    if stack == "HF Trainer":
        if opts.split("::")[0].strip() not in _STOCK_FMS:
            return "fused or third-party kernels"
        if "first micro-batch" in row["how_measured"].lower():
            return "token count extrapolated from the first micro-batch (padding)"
        return ""
    if stack == "PyTorch loop":
        experiment = re.search(r"experiment=(\S+?);", row["notes"])
        name = experiment.group(1) if experiment else ""
        if any(v in name for v in _LORA_VARIANTS):
            return "a LoRA variant ftui does not run"
        return ""
    return f"another training stack ({row['source']})"


def throughput_rows(csv_path: Path) -> tuple[list[ThroughputRow], list[tuple[str, str]]]:
    """The primary measured tokens/s rows ftui can model, each marked comparable or not;
    ([rows], [(row id, why it could not be modelled)])."""
    kept: list[ThroughputRow] = []
    excluded: list[tuple[str, str]] = []
    with csv_path.open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            rid = row["id"]
            if not row["primary"].startswith("yes"):
                excluded.append((rid, "not primary (a re-measurement)"))
                continue
            if not row["tokens_per_s_total"]:
                excluded.append((rid, "no tokens/s (OOM or no result)"))
                continue
            source = row["source"]
            stack = _STACKS.get(source, "torchtune" if "torchtune" in source else "")
            gpu = next((pid for key, pid in _GPU_IDS if key in row["gpu"].lower()), None)
            seq = _tokens_per_sequence(row)
            arch_config = _parse_arch(row["arch"], row["hf_model_id"], row["model"])
            if not stack or gpu is None or seq is None or arch_config is None:
                excluded.append((rid, "stack, GPU, sequence length or architecture unknown"))
                continue
            if (
                any(m in row["extra_opts"].lower() for m in _KERNEL_MARKERS)
                and stack != "HF Trainer"
            ):
                excluded.append((rid, "fused kernels"))
                continue
            if "-dora" in row["notes"]:
                row = {**row, "method": "dora"}
            try:
                config = _row_config(row, seq_len=seq)
            except ValueError:
                config = None
            if config is None:
                excluded.append((rid, f"method or targets outside ftui ({row['method']})"))
                continue
            if row["grad_accum"].strip().isdigit():
                config = config.with_changes(grad_accum=int(row["grad_accum"]))
            arch = ModelArch(
                name=row["model"], source="reference", config=arch_config, hf_id=row["hf_model_id"]
            )
            why = _not_comparable(row, stack)
            kept.append(
                ThroughputRow(
                    row_id=rid,
                    source=source,
                    stack=stack,
                    model=row["model"],
                    arch=arch,
                    config=config,
                    gpu=gpu,
                    measured_tokens_per_s=float(row["tokens_per_s_total"]),
                    comparable=not why,
                    why_not=why,
                )
            )
    return kept, excluded


@dataclass(frozen=True)
class SpeedComparison:
    row: ThroughputRow
    predicted_tokens_per_s: float
    error: float  # (predicted - measured) / measured


def compare_throughput(
    rows: list[ThroughputRow], calibration: ThroughputCalibration | None = None
) -> list[SpeedComparison]:
    """Predicted vs measured job tokens/s for each row (the GPU from its profile)."""
    from engine.plan.throughput import DEFAULT_THROUGHPUT_CALIBRATION, tokens_per_s
    from profiles import find_gpu_profile

    out: list[SpeedComparison] = []
    for row in rows:
        gpu = find_gpu_profile(row.gpu)
        if gpu is None:
            continue
        predicted = tokens_per_s(
            row.arch, row.config, gpu, calibration or DEFAULT_THROUGHPUT_CALIBRATION
        )
        error = (predicted - row.measured_tokens_per_s) / row.measured_tokens_per_s
        out.append(SpeedComparison(row, predicted, error))
    return out


def speed_summary(comparisons: list[SpeedComparison]) -> dict[str, float]:
    """Rows, median, p90 and max |error|, and the signed median (bias)."""
    errors = sorted(abs(c.error) for c in comparisons)
    if not errors:
        return {"rows": 0.0, "median": 0.0, "p90": 0.0, "max": 0.0, "bias": 0.0}
    p90 = errors[min(len(errors) - 1, max(0, -(-9 * len(errors) // 10) - 1))]
    return {
        "rows": float(len(errors)),
        "median": statistics.median(errors),
        "p90": p90,
        "max": errors[-1],
        "bias": statistics.median(c.error for c in comparisons),
    }


def speed_groups(row: ThroughputRow) -> dict[str, str]:
    """The subgroups the error table splits by."""
    c = row.config
    method = "dora" if c.dora else c.method
    if c.method == "qlora":
        method += " (fp32 upcast)" if c.kbit_upcast else " (16-bit)"
    sharding = c.sharding if c.num_gpus > 1 else "single GPU"
    return {
        "source": row.stack,
        "gpu": f"{row.gpu} x{c.num_gpus}",
        "method": method,
        "sharding": sharding,
        "model": row.model,
    }
