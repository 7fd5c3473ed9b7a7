"""`ftui serve RUN --engine vllm`: the run's adapters served by vLLM instead (GPU servers).

    vllm serve BASE --served-model-name base --enable-lora --max-lora-rank R
        --lora-modules final=RUN/final checkpoint-80=RUN/checkpoints/checkpoint-80 ...
        --host H --port P [--dtype D] [--chat-template RUN/serve/chat_template.jinja]

The same model names as ftui's own server (`base`, `final`, `checkpoint-N`), the same bind and
key rules (the key travels as VLLM_API_KEY, never on the command line). A full fine-tune
serves its checkpoint directory as one model. DoRA adapters are refused: vLLM's LoRA kernels
do not apply DoRA's magnitude vector.
"""

from __future__ import annotations

import importlib.util
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from engine.errors import FtuiError
from engine.run.rundir import RunDir, read_json
from engine.serve.options import ServeOptions

LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # what vLLM's --max-lora-rank accepts
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


@dataclass(frozen=True)
class VllmCommand:
    argv: list[str]
    env: dict[str, str]
    chat_template: str | None  # written to `template_path` before vLLM starts
    template_path: Path | None

    def shell(self) -> str:
        key = "VLLM_API_KEY=<your key> " if "VLLM_API_KEY" in self.env else ""
        return key + shlex.join(self.argv)


def vllm_executable() -> str | None:
    """The `vllm` command beside this Python or on PATH, when vLLM is importable."""
    if importlib.util.find_spec("vllm") is None:
        return None
    beside = Path(sys.executable).with_name("vllm")
    return str(beside) if beside.exists() else shutil.which("vllm")


def _max_rank(paths: list[Path]) -> int:
    ranks = [int(read_json(p / "adapter_config.json").get("r") or 8) for p in paths]
    wanted = max(ranks, default=8)
    return next((r for r in LORA_RANKS if r >= wanted), wanted)


def vllm_command(run: RunDir, options: ServeOptions) -> VllmCommand:
    """The vLLM command for this run, or an FtuiError saying why vLLM cannot serve it."""
    from engine.chat.targets import resolve_checkpoint, run_checkpoints, run_target

    target = run_target(run, options.checkpoint, None, options.device)
    argv = ["vllm", "serve"]
    if not target.adapters:  # a full fine-tune: the checkpoint is a whole model
        argv += [target.base_model, "--served-model-name", target.primary]
    else:
        names = [target.primary] + [n for n in run_checkpoints(run) if n != target.primary]
        refs = [resolve_checkpoint(run, name) for name in names]
        dora = [r.name for r in refs if read_json(r.path / "adapter_config.json").get("use_dora")]
        if dora:
            raise FtuiError(
                f"run {run.run_id} trained DoRA adapters ({', '.join(dora)}): vLLM cannot "
                "serve them",
                f"serve with ftui's engine (ftui serve {run.run_id}), or merge the adapter "
                f"(ftui export {run.run_id} --merge --out DIR) and run vllm serve DIR",
            )
        argv += [target.base_model, "--served-model-name", "base", "--enable-lora",
                 "--max-lora-rank", str(_max_rank([r.path for r in refs])),
                 "--lora-modules", *[f"{r.name}={r.path}" for r in refs]]  # fmt: skip
    argv += ["--host", options.host, "--port", str(options.port)]
    if target.dtype in DTYPES:
        argv += ["--dtype", DTYPES[target.dtype]]
    template, template_path = None, None
    tokenizer_config = read_json(Path(target.tokenizer_source) / "tokenizer_config.json")
    if Path(target.tokenizer_source).is_dir() and not tokenizer_config.get("chat_template") and \
            not (Path(target.tokenizer_source) / "chat_template.jinja").is_file():  # fmt: skip
        from engine.data import FALLBACK_CHAT_TEMPLATE  # what the trainer used

        template = FALLBACK_CHAT_TEMPLATE
        template_path = run.path / "serve" / "chat_template.jinja"
        argv += ["--chat-template", str(template_path)]
    env = {"VLLM_API_KEY": options.api_key} if options.api_key else {}
    return VllmCommand(argv, env, template, template_path)


def not_installed(command: VllmCommand) -> FtuiError:
    return FtuiError(
        "vLLM is not installed here; it would run:\n  " + command.shell(),
        "install it on a GPU server (pip install vllm) or serve with ftui's engine "
        "(drop --engine vllm); --print-command prints the command without running it",
    )
