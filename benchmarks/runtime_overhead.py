"""Overhead of ftui's trainer callback on steps/s, and the time of `ftui runs` with 200 runs.

Usage: python benchmarks/runtime_overhead.py
The GPU sampler runs in the supervisor process, not in the trainer, so it costs training no
time at all; the callback runs in every rank and is measured here against the same Trainer
without it, on the tiny model (where a step takes milliseconds, the worst case for overhead).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def trainer_steps_per_s(model_dir: Path, data: Path, run_dir: Path | None, steps: int) -> float:
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from engine.data import build_datasets
    from engine.demo.recipe import demo_spec
    from engine.run.callbacks import make_callback
    from engine.run.rundir import RunDir
    from engine.run.train import load_model_and_tokenizer

    spec = demo_spec().with_changes(model_path=str(model_dir), data=str(data))
    model, tokenizer = load_model_and_tokenizer(spec, "cpu", 0)
    train_ds, _, _ = build_datasets(data, tokenizer, seq_len=128)
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=8, max_steps=steps,
        logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
        disable_tqdm=True, remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding", learning_rate=5e-3,
    )  # fmt: skip
    callbacks = [make_callback(RunDir(run_dir))] if run_dir else []
    trainer = Trainer(
        model=model, args=args, train_dataset=train_ds, processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        callbacks=callbacks,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.train()
    return steps / (time.perf_counter() - start)


def callback_micro_benchmark(run_dir: Path, n: int = 2000) -> float:
    """Microseconds per step of the callback's own work (control poll + one metrics line)."""
    from types import SimpleNamespace

    from engine.run.callbacks import make_callback
    from engine.run.rundir import RunDir

    cb = make_callback(RunDir(run_dir))
    args = SimpleNamespace(per_device_train_batch_size=8, gradient_accumulation_steps=1)
    state = SimpleNamespace(global_step=0, epoch=0.0, max_steps=n, num_input_tokens_seen=0)
    control = SimpleNamespace(should_save=False, should_training_stop=False)
    cb.on_train_begin(args, state, control)
    start = time.perf_counter()
    for step in range(1, n + 1):
        state.global_step = step
        state.num_input_tokens_seen += 256
        cb.on_step_end(args, state, control)
        cb.on_log(args, state, control, logs={"loss": 1.0, "grad_norm": 0.5, "learning_rate": 1e-4})
    return (time.perf_counter() - start) / n * 1e6


def runs_listing(n_runs: int = 200, lines_per_run: int = 5000) -> float:
    from engine.run.rundir import write_json_atomic

    home = Path(tempfile.mkdtemp())
    root = home / "runs"
    for i in range(n_runs):
        run = root / f"run-{i:04d}"
        (run / "control").mkdir(parents=True)
        state = {"status": "completed", "created_at": time.time() - i, "model": "llama-3.1-8b",
                 "method": "lora"}  # fmt: skip
        write_json_atomic(run / "state.json", state)
        with (run / "metrics.jsonl").open("w") as fh:
            for step in range(1, lines_per_run + 1):
                fh.write(
                    json.dumps({"step": step, "loss": 1.0 / step, "max_steps": lines_per_run})
                    + "\n"
                )
    env = {**os.environ, "FTUI_HOME": str(home)}
    times = []
    for _ in range(5):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tui", "runs", "--json"], env=env, check=True,
                       capture_output=True)  # fmt: skip
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    from engine.demo.tiny import build_tiny_model, write_demo_dataset

    tmp = Path(tempfile.mkdtemp())
    model_dir = build_tiny_model(tmp / "model")
    data = write_demo_dataset(tmp / "data.jsonl")
    (tmp / "run" / "control").mkdir(parents=True)
    print(f"callback work per step: {callback_micro_benchmark(tmp / 'run'):.1f} µs")
    steps = 300
    without, with_cb = [], []
    for i in range(3):
        without.append(trainer_steps_per_s(model_dir, data, None, steps))
        run = tmp / f"run{i}"
        (run / "control").mkdir(parents=True)
        with_cb.append(trainer_steps_per_s(model_dir, data, run, steps))
    a, b = statistics.median(without), statistics.median(with_cb)
    print(f"tiny model, {steps} steps, logging every step: without callback {a:.1f} steps/s, "
          f"with {b:.1f} steps/s: overhead {(a - b) / a:+.2%}")  # fmt: skip
    print(f"`ftui runs --json` with 200 runs (5,000 metrics lines each): {runs_listing():.3f} s")


if __name__ == "__main__":
    main()
