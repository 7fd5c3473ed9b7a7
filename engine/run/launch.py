"""From a run spec to the real launch: argv (never a shell string), env, generated configs.

Everything is written into the run directory (`command.json`, `accelerate.yaml`,
`deepspeed.json`, `hostfile`, `sbatch.sh`) so a user can re-run it without ftui.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.paths import source_root
from engine.run.spec import RunSpec

TRAIN_MODULE = "engine.run.train"


@dataclass(frozen=True)
class LaunchCommand:
    launcher: str
    argv: list[str]
    env: dict[str, str]  # set on top of the caller's environment
    files: dict[str, str] = field(default_factory=dict)  # name in the run dir -> content
    nproc_per_node: int = 1
    world_size: int = 1

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("files")
        data["generated_files"] = sorted(self.files)
        data["shell"] = shlex.join(self.argv)
        return data


def resolve_launcher(spec: RunSpec) -> str:
    chosen = spec.distributed.launcher
    if chosen != "auto":
        return chosen
    single = spec.training.num_gpus == 1 and spec.distributed.nodes == 1
    if single and spec.training.sharding == "none":
        return "python"
    return "torchrun"


def uses_deepspeed(spec: RunSpec) -> bool:
    return spec.training.sharding.startswith("zero") or resolve_launcher(spec) == "deepspeed"


def on_cpu(spec: RunSpec) -> bool:
    return spec.device == "cpu"


def deepspeed_config(spec: RunSpec) -> dict[str, Any]:
    """A DeepSpeed JSON whose batch/precision/clipping values are "auto", so the HF Trainer
    fills them from TrainingArguments and they can never disagree."""
    t = spec.training
    stage = int(t.sharding[-1]) if t.sharding.startswith("zero") else 0
    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": not on_cpu(spec),
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if stage >= 2 and t.offload in ("optimizer", "params"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if stage == 3:
        zero.update(
            {
                "stage3_prefetch_bucket_size": "auto",
                "stage3_param_persistence_threshold": "auto",
                "stage3_max_live_parameters": 1e9,
                "stage3_max_reuse_distance": 1e9,
                "stage3_gather_16bit_weights_on_model_save": True,
            }
        )
        if t.offload == "params":
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "steps_per_print": 1_000_000,
        "wall_clock_breakdown": False,
    }


def accelerate_config(spec: RunSpec, run_dir: Path) -> dict[str, Any]:
    t, d = spec.training, spec.distributed
    total = t.num_gpus * d.nodes
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "num_machines": d.nodes,
        "machine_rank": d.node_rank,
        "num_processes": total,  # accelerate counts processes across all machines
        "main_process_ip": d.master_addr,
        "main_process_port": d.master_port,
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": on_cpu(spec),
    }
    if uses_deepspeed(spec):
        config["distributed_type"] = "DEEPSPEED"
        # With a JSON file, mixed_precision and zero_* keys must stay out of the YAML.
        config["deepspeed_config"] = {
            "deepspeed_config_file": str(run_dir / "deepspeed.json"),
            "zero3_init_flag": t.sharding == "zero3",
        }
    else:
        if total > 1:
            config["distributed_type"] = "MULTI_CPU" if on_cpu(spec) else "MULTI_GPU"
        else:
            config["distributed_type"] = "NO"
        if t.sharding == "fsdp":
            config["distributed_type"] = "FSDP"
            config["fsdp_config"] = {
                "fsdp_sharding_strategy": "FULL_SHARD",
                "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                "fsdp_offload_params": t.offload == "params",
                "fsdp_use_orig_params": True,
                "fsdp_cpu_ram_efficient_loading": True,
                "fsdp_sync_module_states": True,
                "fsdp_state_dict_type": "SHARDED_STATE_DICT",
            }
        precision = "no" if on_cpu(spec) or t.dtype == "fp32" else t.dtype
        config["mixed_precision"] = precision
    return config


def _train_args(run_dir: Path) -> list[str]:
    return ["--run-dir", str(run_dir)]


def build_launch(spec: RunSpec, run_dir: Path, *, python: str | None = None) -> LaunchCommand:
    """The command that starts training on this node."""
    import yaml

    python = python or sys.executable
    t, d = spec.training, spec.distributed
    launcher = resolve_launcher(spec)
    files: dict[str, str] = {}
    env = {
        "PYTHONUNBUFFERED": "1",
        # torchrun re-installs a SIGHUP handler over nohup's; keep the hangup away from it.
        "PET_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    if spec.model_path:
        env["HF_HUB_OFFLINE"] = "1"
    if on_cpu(spec):
        env["CUDA_VISIBLE_DEVICES"] = ""
        env["DS_ACCELERATOR"] = "cpu"
    if uses_deepspeed(spec):
        files["deepspeed.json"] = json.dumps(deepspeed_config(spec), indent=2) + "\n"
    nproc = t.num_gpus
    world = nproc * d.nodes
    module = [*_train_args(run_dir)]
    if launcher == "python":
        argv = [python, "-m", TRAIN_MODULE, *module]
    elif launcher == "torchrun":
        argv = [python, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
        if d.nodes == 1:
            argv += ["--standalone"]
        else:
            argv += [
                "--nnodes", str(d.nodes),
                "--node-rank", str(d.node_rank),
                "--master-addr", d.master_addr,
                "--master-port", str(d.master_port),
            ]  # fmt: skip
        argv += ["--module", TRAIN_MODULE, *module]
    elif launcher == "accelerate":
        files["accelerate.yaml"] = yaml.safe_dump(accelerate_config(spec, run_dir), sort_keys=False)
        argv = [
            python, "-m", "accelerate.commands.launch",
            "--config_file", str(run_dir / "accelerate.yaml"),
            "--module", TRAIN_MODULE, *module,
        ]  # fmt: skip
    elif launcher == "deepspeed":
        argv = [
            python, "-m", "deepspeed.launcher.runner",
            "--num_gpus", str(nproc),
            "--num_nodes", str(d.nodes),
            "--master_addr", d.master_addr,
            "--master_port", str(d.master_port),
        ]  # fmt: skip
        if d.hostfile:
            argv += ["--hostfile", d.hostfile]
        elif d.nodes > 1:
            files["hostfile"] = "".join(f"node-{i} slots={nproc}\n" for i in range(d.nodes))
            argv += ["--hostfile", str(run_dir / "hostfile")]
        argv += ["--module", TRAIN_MODULE, *module]
    else:  # validated earlier
        raise ValueError(launcher)
    return LaunchCommand(launcher, argv, env, files, nproc, world)


def slurm_script(spec: RunSpec, run_dir: Path, *, python: str | None = None) -> str:
    """An sbatch script: one task per node, each running torchrun with a c10d rendezvous.
    It sets the same environment as a local launch (a CPU run hides the node's GPUs and asks
    Slurm for none) and imports this same ftui."""
    python = python or sys.executable
    t, d = spec.training, spec.distributed
    env = dict(build_launch(spec, run_dir, python=python).env)
    root = str(source_root())
    lines = [
        "#!/usr/bin/env bash",
        f"#SBATCH --job-name=ftui-{run_dir.name}",
        f"#SBATCH --nodes={d.nodes}",
        "#SBATCH --ntasks-per-node=1",
        *([] if on_cpu(spec) else [f"#SBATCH --gpus-per-node={t.num_gpus}"]),
        f"#SBATCH --output={run_dir / 'stdout.log'}",
        "#SBATCH --open-mode=append",
        "set -euo pipefail",
        'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        *(f"export {name}={shlex.quote(value)}" for name, value in sorted(env.items())),
        f'export PYTHONPATH={shlex.quote(root)}"${{PYTHONPATH:+:$PYTHONPATH}}"',
        "srun " + shlex.join(
            [
                python, "-m", "torch.distributed.run",
                "--nnodes", str(d.nodes),
                "--nproc-per-node", str(t.num_gpus),
                "--rdzv-backend", "c10d",
                "--rdzv-id", run_dir.name,
            ]
        ) + f' --rdzv-endpoint "$head_node:{d.master_port}" '
        + shlex.join(["--module", TRAIN_MODULE, *_train_args(run_dir)]),
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_slurm_run(spec: RunSpec, plan_summary: dict[str, Any] | None = None) -> Path:
    """A run folder prepared for `sbatch` (spec, plan, generated configs, command.json and
    sbatch.sh), nothing started. It has no state.json: no ftui process watches it; the
    trainer writes its metrics and events into it once Slurm starts it."""
    from engine.run.rundir import create_run_dir, write_json_atomic

    spec.validate()
    run = create_run_dir(spec.name or Path(spec.model).name)
    run.spec.write_text(spec.to_yaml(), encoding="utf-8")
    write_json_atomic(run.plan, plan_summary or {})
    command = build_launch(spec, run.path)
    for filename, content in command.files.items():
        (run.path / filename).write_text(content, encoding="utf-8")
    write_json_atomic(run.command, command.to_dict())
    script = run.path / "sbatch.sh"
    script.write_text(slurm_script(spec, run.path), encoding="utf-8")
    script.chmod(0o755)
    return script
