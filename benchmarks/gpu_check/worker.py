"""One configuration of the grid, in a process of its own (a clean allocator, and an
out-of-memory error that cannot poison the next row); also builds the launch check's model.

    python -m benchmarks.gpu_check.worker measure --row JSON --result FILE [--smoke]
    python -m benchmarks.gpu_check.worker build-model --profile ID --out DIR [--smoke]

`measure` builds the profile's real architecture with random weights directly on the device,
in the dtype ftui's trainer would load it in, applies LoRA the way the trainer does, and runs
the HF Trainer with the TrainingArguments ftui's trainer builds, on random full-length
sequences. It writes one JSON object: torch's max allocated and reserved, NVML's device and
per-process used memory, and tokens/s over steps 3 to the last (synchronised).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks.gpu_check.grid import GIB, Row, model_config

WARMUP_STEPS = 2  # tokens/s counts from the start of step 3


def _dtype(torch: Any, row: Row, dtype: str, device: str) -> Any:
    """The dtype ftui's trainer loads weights in (engine/run/train.py: fp32 on CPU; fp32
    master weights for a mixed-precision full fine-tune; else the compute dtype)."""
    if device == "cpu" or (row.method == "full" and dtype != "fp32"):
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]


def build_model(row: Row, config: dict[str, Any], dtype: Any, device: str) -> Any:
    """Random weights built on the device itself (no host copy, no download)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    hf_config = AutoConfig.for_model(**config)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(
            hf_config, dtype=dtype, attn_implementation=row.attn
        )
    if row.method == "qlora":
        quantize_linears(model, dtype, device)
    return model


def quantize_linears(model: Any, compute_dtype: Any, device: str) -> None:
    """Every decoder linear to bitsandbytes NF4 with double quantisation, as the trainer's
    BitsAndBytesConfig loads them; embeddings, norms and lm_head stay 16-bit. One layer at a
    time, so the 16-bit copy is freed as it goes."""
    import bitsandbytes as bnb
    import torch

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, torch.nn.Linear) or name == "lm_head":
                continue
            quantized = bnb.nn.Linear4bit(
                child.in_features,
                child.out_features,
                bias=child.bias is not None,
                compute_dtype=compute_dtype,
                compress_statistics=True,
                quant_type="nf4",
                quant_storage=torch.uint8,
                device="meta",
            )
            weight = bnb.nn.Params4bit(
                child.weight.data,
                requires_grad=False,
                compress_statistics=True,
                quant_type="nf4",
                quant_storage=torch.uint8,
                module=quantized,
            )
            quantized.weight = weight._quantize(device)
            if child.bias is not None:
                quantized.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
            setattr(parent, name, quantized)
    model.is_loaded_in_4bit = True  # what PEFT and the Trainer check for a k-bit model


def apply_lora(model: Any, row: Row) -> Any:
    """LoRA as engine/run/train.py applies it."""
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed

    set_seed(0)
    targets: Any = "all-linear" if "all-linear" in row.targets else list(row.targets)
    lora = LoraConfig(
        r=row.rank,
        lora_alpha=2 * row.rank,
        target_modules=targets,
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    if row.grad_ckpt:
        model.enable_input_require_grads()
    return model


class GpuMemory:
    """NVML's view of this process's GPU, read through ftui's own NVML backend."""

    def __init__(self, device_index: int) -> None:
        import torch

        from engine.machine.hardware import NvmlBackend, read_host_info

        self.backend = NvmlBackend()
        self.host = read_host_info(Path.cwd())
        # torch and NVML number GPUs differently under CUDA_VISIBLE_DEVICES: match by UUID.
        self.uuid = str(getattr(torch.cuda.get_device_properties(device_index), "uuid", ""))
        self.device_used = 0
        self.process_used: int | None = None

    def sample(self) -> None:
        try:
            snap = self.backend.snapshot(host=self.host)
        except Exception:  # a failed read loses one sample, never the row
            return
        gpus = [g for g in snap.gpus if self.uuid and g.uuid and g.uuid.endswith(self.uuid)]
        gpus = gpus or list(snap.gpus)
        if not gpus:
            return
        gpu = gpus[0]
        self.device_used = max(self.device_used, gpu.memory_used_bytes)
        for proc in gpu.processes:
            if proc.pid == os.getpid() and proc.used_memory_bytes is not None:
                self.process_used = max(self.process_used or 0, proc.used_memory_bytes)


def _timing_callback(steps: int, sync: Any, nvml: GpuMemory | None) -> Any:
    from transformers import TrainerCallback

    class Timing(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.t0: float | None = None
            self.t1: float | None = None
            self.steps_done = 0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == WARMUP_STEPS:
                sync()
                self.t0 = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.steps_done = state.global_step
            if nvml is not None:
                nvml.sample()
            if state.global_step == steps:
                sync()
                self.t1 = time.perf_counter()

    return Timing()


def measure(row: Row, *, smoke: bool, steps: int, dtype: str) -> dict[str, Any]:
    import torch
    from transformers import Trainer

    from engine.run.rundir import RunDir
    from engine.run.spec import Hyper, RunSpec
    from engine.run.train import training_arguments

    device = "cuda" if torch.cuda.is_available() and not smoke else "cpu"
    result: dict[str, Any] = {"device": device, "status": "error", "steps": 0}
    config = model_config(row.model, smoke)
    on_gpu = device == "cuda"
    nvml = None
    if on_gpu:
        try:
            nvml = GpuMemory(torch.cuda.current_device())
        except Exception as exc:  # torch's numbers still count without NVML's
            result["nvml_error"] = f"{type(exc).__name__}: {exc}"[:300]
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    started = time.perf_counter()
    try:
        model = build_model(row, config, _dtype(torch, row, dtype, device), device)
        if row.method != "full":
            model = apply_lora(model, row)
        if on_gpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        result["build_s"] = round(time.perf_counter() - started, 2)
        vocab = int(config["vocab_size"])
        generator = torch.Generator().manual_seed(0)
        samples = []
        for _ in range(steps * row.batch):
            ids = torch.randint(0, vocab, (row.seq_len,), generator=generator)
            samples.append(
                {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
            )
        spec = RunSpec(
            model=row.model,
            data="random tokens",
            device=device,
            training=row.training_config(dtype),
            hyper=Hyper(max_steps=steps, logging_steps=steps, save_steps=10**6, warmup_steps=1),
        )
        timing = _timing_callback(steps, sync, nvml)
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
            args = training_arguments(spec, RunDir(Path(tmp)), device, False)
            trainer = Trainer(model=model, args=args, train_dataset=samples, callbacks=[timing])
            try:
                trainer.train()
                result["status"] = "ok"
            except torch.OutOfMemoryError as exc:
                result["status"] = "oom"
                result["error"] = str(exc).splitlines()[0][:300]
        result["steps"] = timing.steps_done
        if timing.t0 is not None and timing.t1 is not None and timing.t1 > timing.t0:
            tokens = (steps - WARMUP_STEPS) * row.batch * row.seq_len
            result["tokens_per_s"] = round(tokens / (timing.t1 - timing.t0), 1)
            result["step_s"] = round((timing.t1 - timing.t0) / (steps - WARMUP_STEPS), 4)
    except torch.OutOfMemoryError as exc:  # building the model already ran out
        result["status"] = "oom"
        result["error"] = "while building: " + str(exc).splitlines()[0][:300]
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"[:500]
        result["traceback"] = traceback.format_exc()[-4000:]
    result["wall_s"] = round(time.perf_counter() - started, 2)
    if on_gpu:
        result["max_allocated_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 3)
        result["max_reserved_gib"] = round(torch.cuda.max_memory_reserved() / GIB, 3)
        if nvml is not None:
            nvml.sample()
            result["nvml_used_gib"] = round(nvml.device_used / GIB, 3)
            if nvml.process_used is not None:
                result["nvml_process_gib"] = round(nvml.process_used / GIB, 3)
    else:
        import resource

        result["cpu_max_rss_gib"] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 3
        )
    return result


def build_launch_model(profile: str, out: Path, *, smoke: bool) -> dict[str, Any]:
    """A local model folder like a hub snapshot: the profile's architecture with random
    weights (16-bit, built on the GPU when there is one) and the demo's small tokenizer,
    so `ftui launch --model DIR` runs without any download."""
    import torch

    from engine.demo.tiny import build_tokenizer

    started = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() and not smoke else "cpu"
    tokenizer = build_tokenizer()
    config = model_config(profile, smoke)
    for key, token in (("bos_token_id", "<|bos|>"), ("eos_token_id", "<|end|>")):
        config[key] = tokenizer.convert_tokens_to_ids(token)
    config["pad_token_id"] = tokenizer.convert_tokens_to_ids("<|pad|>")
    row = Row(profile, "lora", 1, 1, False)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = build_model(row, config, dtype, device)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    return {"params": params, "device": device, "seconds": round(time.perf_counter() - started, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check.worker")
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--row", required=True, help="the Row as JSON")
    m.add_argument("--result", required=True, type=Path)
    m.add_argument("--steps", type=int, default=8)
    m.add_argument("--dtype", default="bf16")
    m.add_argument("--smoke", action="store_true")
    b = sub.add_parser("build-model")
    b.add_argument("--profile", required=True)
    b.add_argument("--out", required=True, type=Path)
    b.add_argument("--result", required=True, type=Path)
    b.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "measure":
        data = json.loads(args.row)
        row = Row(**{**data, "targets": tuple(data["targets"])})
        result = measure(row, smoke=args.smoke, steps=args.steps, dtype=args.dtype)
    else:
        result = build_launch_model(args.profile, args.out, smoke=args.smoke)
    args.result.write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
