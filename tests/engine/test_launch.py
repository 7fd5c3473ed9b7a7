"""Generated launches: argv lists, accelerate YAML and DeepSpeed JSON that their tools accept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from engine.run.launch import accelerate_config, build_launch, deepspeed_config, slurm_script
from engine.run.spec import Distributed, RunSpec
from engine.training_config import TrainingConfig

RUN = Path("/runs/r1")


def spec(training: TrainingConfig, **dist: object) -> RunSpec:
    return RunSpec(
        model="m", data="d", model_path="/m", training=training, distributed=Distributed(**dist)
    ).validate()


def test_single_gpu_runs_the_trainer_directly() -> None:
    cmd = build_launch(spec(TrainingConfig()), RUN, python="/py")
    assert cmd.launcher == "python"
    assert cmd.argv == ["/py", "-m", "engine.run.train", "--run-dir", "/runs/r1"]
    assert cmd.env["PET_SIGNALS_TO_HANDLE"] == "SIGTERM,SIGINT"  # no SIGHUP to torchrun
    assert cmd.env["HF_HUB_OFFLINE"] == "1"


def test_several_gpus_use_torchrun_and_zero_gets_a_deepspeed_json() -> None:
    cmd = build_launch(spec(TrainingConfig(method="full", num_gpus=8, sharding="zero3",
                                           offload="optimizer")), RUN, python="/py")  # fmt: skip
    assert cmd.argv[:6] == ["/py", "-m", "torch.distributed.run", "--nproc-per-node", "8",
                            "--standalone"]  # fmt: skip
    assert cmd.argv[-4:] == ["--module", "engine.run.train", "--run-dir", "/runs/r1"]
    ds = json.loads(cmd.files["deepspeed.json"])
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["train_micro_batch_size_per_gpu"] == "auto"  # filled by the Trainer: no mismatch
    assert ds["gradient_accumulation_steps"] == "auto"


def test_multi_node_torchrun_names_this_node() -> None:
    s = spec(TrainingConfig(num_gpus=4), nodes=2, node_rank=1, master_addr="10.1.1.1",
             master_port=29600)  # fmt: skip
    argv = build_launch(s, RUN).argv
    for flag, value in (("--nnodes", "2"), ("--node-rank", "1"), ("--master-addr", "10.1.1.1"),
                        ("--master-port", "29600"), ("--nproc-per-node", "4")):  # fmt: skip
        assert argv[argv.index(flag) + 1] == value


def test_accelerate_config_is_accepted_by_accelerate() -> None:
    accelerate = pytest.importorskip("accelerate.commands.config.config_args")
    for training, kind in (
        (TrainingConfig(num_gpus=2), "MULTI_GPU"),
        (TrainingConfig(method="full", num_gpus=4, sharding="zero2"), "DEEPSPEED"),
        (TrainingConfig(method="full", num_gpus=4, sharding="fsdp"), "FSDP"),
    ):
        s = spec(training, launcher="accelerate", nodes=2, node_rank=0)
        config = accelerate_config(s, RUN)
        assert config["distributed_type"] == kind
        assert config["num_processes"] == training.num_gpus * 2  # total across machines
        if kind == "DEEPSPEED":
            assert "mixed_precision" not in config  # the JSON owns it
        path = Path(f"/tmp/ftui-accelerate-{kind}.yaml")
        path.write_text(yaml.safe_dump(config))
        loaded = accelerate.ClusterConfig.from_yaml_file(str(path))  # rejects unknown keys
        assert loaded.num_machines == 2


def test_deepspeed_launcher_and_hostfile() -> None:
    s = spec(TrainingConfig(method="full", num_gpus=8, sharding="zero2"), launcher="deepspeed",
             nodes=2, master_addr="10.0.0.1")  # fmt: skip
    cmd = build_launch(s, RUN, python="/py")
    assert cmd.argv[:3] == ["/py", "-m", "deepspeed.launcher.runner"]
    assert "--hostfile" in cmd.argv
    assert cmd.files["hostfile"] == "node-0 slots=8\nnode-1 slots=8\n"
    assert deepspeed_config(s)["zero_optimization"]["stage"] == 2


def test_slurm_script_runs_torchrun_on_every_node() -> None:
    s = spec(TrainingConfig(num_gpus=8), nodes=4, master_port=29555)
    script = slurm_script(s, RUN)
    assert "#SBATCH --nodes=4" in script and "#SBATCH --gpus-per-node=8" in script
    assert "--rdzv-backend c10d" in script and ':29555"' in script
    assert "srun " in script and "engine.run.train" in script
