"""Start-up discipline: the light commands never import torch, transformers or textual;
`engine` never imports the UI layer (the run-time half of the import-linter contract)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "textual", "peft", "deepspeed", "datasets", "accelerate")


def imported_modules(args: list[str], env: dict[str, str]) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "tui", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode in (0, 1), out.stderr[-2000:]
    modules = set()
    for line in out.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            modules.add(line.rsplit("|", 1)[1].strip())
    assert modules, "no -X importtime output"
    return modules


@pytest.mark.parametrize(
    "args",
    [["--help"], ["--version"], ["gpus"], ["gpus", "--simulate", "h100x8", "--json"], ["doctor"]],
)
def test_light_commands_do_not_import_the_ml_stack(
    args: list[str], cli_env: dict[str, str]
) -> None:
    modules = imported_modules(args, cli_env)
    leaked = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert not leaked, f"`ftui {' '.join(args)}` imported {leaked[:10]}"


def test_engine_is_headless(cli_env: dict[str, str]) -> None:
    code = (
        "import importlib, pkgutil, sys, engine\n"
        "for m in pkgutil.walk_packages(engine.__path__, 'engine.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted({n.split('.')[0] for n in sys.modules} & "
        "{'tui', 'textual', 'rich', 'torch', 'transformers'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=cli_env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"importing engine pulled in: {out.stdout.strip()}"
