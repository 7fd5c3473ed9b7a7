"""The Trainer callback that keeps the run directory current.

On rank 0 it appends `metrics.jsonl` (tokens/s measured over the last logging interval from
real, non-padding tokens) and `events.jsonl`, and updates `state.json`. On every rank it polls
`control/` for `stop` and `save-now` (rank 0 reads the files, every rank gets the same answer
through one all-reduce so they stop at the same step), and it stops the run on a NaN/inf loss.

A stop has four sources, all handled the same way (checkpoint at the end of this step, then
exit, status `stopped`): the `stop` file, SIGTERM/SIGINT (`ftui stop --now`: the handler only
sets a flag), the supervisor's death (each node's first process checks it once a second),
so a trainer never trains on unsupervised, and a budget cap reached (`--max-cost`,
`--max-hours`: rank 0 compares the run's wall time × price with the cap each step, reason
`budget`; the first projection over a cap is an event, `budget_projection`).
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from engine.run.rundir import FINAL, JsonlTail, RunDir, append_jsonl, write_json_atomic

STOP, SAVE_NOW = "stop", "save-now"
SUPERVISOR_CHECK_SECONDS = 1.0

# Set by the trainer's SIGTERM/SIGINT handler (a flag and nothing else); read every step.
signalled: dict[str, int] = {"signal": 0}


STAGE_METRIC_PREFIXES = ("eval_", "rewards/", "logps/", "kl", "nll_loss", "log_odds")


def on_stop_signal(signum: int, frame: Any) -> None:
    signalled["signal"] = signum


class SupervisorWatch:
    """Whether the supervisor that started this trainer still lives (pid + create time from
    the environment; a trainer started by hand has none and never stops for this)."""

    def __init__(self) -> None:
        pid = os.environ.get("FTUI_SUPERVISOR_PID")
        created = os.environ.get("FTUI_SUPERVISOR_CREATE_TIME")
        self.pid = int(pid) if pid and pid.isdigit() else None
        try:
            self.created = float(created) if created and created != "None" else None
        except ValueError:
            self.created = None
        self._next = 0.0
        self.gone = False

    def check(self) -> bool:
        """True once the supervisor is gone (looked at once a second at most)."""
        if self.gone or self.pid is None:
            return self.gone
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + SUPERVISOR_CHECK_SECONDS
        from engine.run.processes import pid_alive

        self.gone = not pid_alive(self.pid, self.created)
        return self.gone


@lru_cache(maxsize=1)
def callback_class() -> type:
    """The callback class (built on first use: transformers is imported only by the trainer)."""
    from transformers import TrainerCallback

    class FtuiCallback(TrainerCallback):  # type: ignore[misc,valid-type]
        def __init__(self, run: RunDir, *, rank: int = 0, world_size: int = 1) -> None:
            self.run = run
            self.rank = rank
            self.world_size = world_size
            self.is_main = rank == 0  # writes metrics, reads control/
            # The first process of each node keeps that node's run directory current.
            self.is_node_main = int(os.environ.get("LOCAL_RANK", "0")) == 0
            self._last_log_t: float | None = None
            self._last_tokens: float | None = None
            self._last_step = 0
            self._samples_per_step = 1
            self.stop_requested = False
            self.stop_reason: str | None = None
            self.supervisor = SupervisorWatch()
            self.probe_enabled = False
            self.method = "lora"
            self.attn = "sdpa"
            self.probe_at: int | None = None  # global step at which the probe measures
            self.budget: Any = None  # engine.run.cost.BudgetWatch on rank 0 of a capped run
            self._speeds: list[float] = []  # per-interval tokens/s, until the speed is stored
            self._speed_stored = False

        # -- helpers -------------------------------------------------------------------------------
        def _sync_flags(self, stop: bool, save: bool) -> tuple[bool, bool]:
            """Every rank takes rank 0's decision (one tiny all-reduce per step)."""
            if self.world_size <= 1:
                return stop, save
            import torch
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized()):
                return stop, save
            device = "cpu"
            if dist.get_backend() == "nccl":
                device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            flags = torch.tensor([float(stop), float(save)], device=device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            return bool(flags[0].item()), bool(flags[1].item())

        def _check_budget(self, state: Any) -> bool:
            """True when a cap is reached; the first projection over a cap is an event."""
            now = time.time()
            over = self.budget.projection_over(now, state.global_step, state.max_steps)
            if over is not None:
                self.run.event("budget_projection", step=state.global_step, **over)
                self.run.update_state(budget_projection=over)
            reached = self.budget.reached(now)
            if reached is None:
                return False
            self.run.event("budget_reached", step=state.global_step, cap=reached)
            self.run.update_state(note=f"budget cap: {reached}")
            return True

        def _truncate_history(self, step: int) -> None:
            """After a resume from step N, metrics above N belong to the abandoned attempt."""
            path = self.run.metrics
            if not path.exists():
                return
            kept = [r for r in JsonlTail(path).read() if int(r.get("step", 0)) <= step]
            tmp = path.with_suffix(".jsonl.tmp")
            with tmp.open("w", encoding="utf-8") as fh:
                fh.writelines(json.dumps(record) + "\n" for record in kept)
            os.replace(tmp, path)

        # -- hooks ---------------------------------------------------------------------------------
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._samples_per_step = (
                args.per_device_train_batch_size
                * args.gradient_accumulation_steps
                * self.world_size
            )
            self._last_step = state.global_step
            self._last_log_t = time.time()
            self._last_tokens = float(getattr(state, "num_input_tokens_seen", 0) or 0)
            if self.probe_enabled and self.is_node_main and _cuda():
                from engine.run.probe import PROBE_STEPS

                self.probe_at = state.global_step + PROBE_STEPS
            if self.is_main:
                from engine.run.cost import budget_watch

                self.budget = budget_watch(self.run, state.global_step, time.time())
            if not self.is_node_main:
                return
            if state.global_step > 0 and self.is_main:
                self._truncate_history(state.global_step)
                self.run.event("resumed", step=state.global_step)
            from engine.run.processes import create_time

            me = {
                "trainer_pid": os.getpid(),
                "trainer_pgid": os.getpgrp(),
                "trainer_create_time": create_time(os.getpid()),
            }
            self.run.modify_state(
                lambda current: {
                    # A stop may have come while the model loaded: keep "stopping".
                    "status": "stopping" if current.get("status") == "stopping" else "running",
                    "max_steps": state.max_steps,
                    "world_size": self.world_size,
                    "host": socket.gethostname(),
                    "train_started_at": time.time(),
                    "start_step": state.global_step,
                    **me,
                }
            )
            self.run.event("train_begin", step=state.global_step, max_steps=state.max_steps, **me)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if self.probe_at is not None and state.global_step >= self.probe_at:
                self.probe_at = None
                self._probe(kwargs.get("model"))
            stop = save = False
            reason = None
            if self.is_main:
                stop = (self.run.control / STOP).exists()
                save_path = self.run.control / SAVE_NOW
                save = save_path.exists()
                if save:
                    save_path.unlink(missing_ok=True)
                reason = "requested" if stop else None
                if self.budget is not None and not stop and self._check_budget(state):
                    stop, reason = True, "budget"
            if signalled["signal"]:
                stop, reason = True, reason or f"signal {signalled['signal']}"
            if self.is_node_main and self.supervisor.check():
                stop, reason = True, reason or "supervisor gone"
            stop, save = self._sync_flags(stop, save)
            if save:
                control.should_save = True
                if self.is_main:
                    self.run.event("save_requested", step=state.global_step)
            if stop and not self.stop_requested:
                self.stop_requested = True
                self.stop_reason = reason or "another rank stopped"
                control.should_save = True
                control.should_training_stop = True
                if self.is_node_main:
                    self.run.event(
                        "stop_requested", step=state.global_step, reason=self.stop_reason
                    )
                    self.run.modify_state(
                        lambda s: None if s.get("status") in FINAL else {"status": "stopping"}
                    )
            return control

        def on_log(
            self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any
        ) -> Any:
            logs = dict(logs or {})
            loss = logs.get("loss")
            if isinstance(loss, float) and not math.isfinite(loss):
                control.should_training_stop = True
                if self.is_main:
                    self.run.event("nan", step=state.global_step, loss=str(loss))
                    self.run.update_state(failure="nan", nan_step=state.global_step)
            if not self.is_main:
                return control
            now = time.time()
            record: dict[str, Any] = {"t": now, "step": state.global_step, "epoch": state.epoch}
            if "train_loss" in logs:  # end-of-training summary (per-step logs have "loss")
                self.run.update_state(summary=logs)
                return control
            for key in ("loss", "grad_norm", "learning_rate"):
                if key in logs:
                    record["lr" if key == "learning_rate" else key] = logs[key]
            for key, value in logs.items():
                # eval metrics, and the preference stages' (TRL): rewards/chosen, .../margins,
                # logps/*, kl (KTO), nll_loss and log_odds_ratio (ORPO)
                if key.startswith(STAGE_METRIC_PREFIXES):
                    record[key] = value
            tokens = float(getattr(state, "num_input_tokens_seen", 0) or 0)
            record["tokens_seen"] = tokens
            if self._last_log_t is not None and now > self._last_log_t and "loss" in record:
                dt = now - self._last_log_t
                record["tokens_per_s"] = max(0.0, tokens - (self._last_tokens or 0.0)) / dt
                record["tokens_per_s_kind"] = "non-padding input tokens, last logging interval"
                steps = max(0, state.global_step - self._last_step)
                record["samples_per_s"] = steps * self._samples_per_step / dt
            if "loss" in record:
                self._last_log_t, self._last_tokens, self._last_step = (
                    now,
                    tokens,
                    state.global_step,
                )
            record["max_steps"] = state.max_steps
            mem = _torch_memory()
            if mem:
                record["mem"] = mem
            append_jsonl(self.run.metrics, record)
            if "tokens_per_s" in record:
                self._remember_speed(record["tokens_per_s"])
            return control

        def _remember_speed(self, tokens_per_s: float) -> None:
            """Once the run's speed is steady, store it for the next plan of this kind (once)."""
            from engine.run.probe import remember_run_speed

            if self._speed_stored:
                return

            self._speeds.append(tokens_per_s)
            try:
                self._speed_stored = remember_run_speed(self.run, self._speeds) is not None
            except Exception as exc:  # a correction never stops training
                self._speed_stored = True
                self.run.event("speed_stored", not_stored=f"{type(exc).__name__}: {exc}")

        def _probe(self, model: Any) -> None:
            """Measured peak vs the plan; remember the ratio for this setup."""
            import torch

            from engine.plan.corrections import CorrectionKey, store_correction
            from engine.run.probe import probe_result

            measured = int(torch.cuda.max_memory_allocated())
            total = int(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
            plan = dict(self.run.read_state().get("plan_summary") or {})
            result = probe_result(measured, total, plan)
            if "predicted_allocated_bytes" in result and plan.get("gpu"):
                config = getattr(getattr(model, "config", None), "model_type", None) or "unknown"
                key = CorrectionKey(config, self.method, str(plan["gpu"]), self.attn)
                try:
                    result["stored_ratio"] = store_correction(
                        key, result["predicted_allocated_bytes"], measured
                    )
                except ValueError as exc:
                    result["not_stored"] = str(exc)
            self.run.event("probe", **result)
            self.run.update_state(probe=result)

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.is_node_main:
                path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                self.run.event("checkpoint", step=state.global_step, path=str(path))
                self.run.update_state(
                    last_checkpoint=str(path), last_checkpoint_step=state.global_step
                )

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.is_node_main:
                self.run.event("train_end", step=state.global_step, stopped=self.stop_requested)

    return FtuiCallback


def make_callback(
    run: RunDir,
    *,
    rank: int = 0,
    world_size: int = 1,
    probe: bool = False,
    method: str = "lora",
    attn: str = "sdpa",
) -> Any:
    cb = callback_class()(run, rank=rank, world_size=world_size)
    cb.probe_enabled, cb.method, cb.attn = probe, method, attn
    return cb


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _torch_memory() -> dict[str, int] | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return {
        "allocated": int(torch.cuda.memory_allocated()),
        "reserved": int(torch.cuda.memory_reserved()),
        "max_allocated": int(torch.cuda.max_memory_allocated()),
        "max_reserved": int(torch.cuda.max_memory_reserved()),
    }


def write_final_marker(run: RunDir, info: dict[str, Any]) -> None:
    write_json_atomic(run.final / "ftui.json", info)
