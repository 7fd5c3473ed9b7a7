#!/usr/bin/env bash
# Set up ftui in ./.venv: torch first (pinned), then ftui with its training stack and dev tools.
# On a GPU server the PyPI torch wheel is the CUDA build; on a laptop or CI it runs on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet "torch==${FTUI_TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install --quiet -e ".[train,eval,serve,dev]"
echo "ftui is installed: run .venv/bin/ftui (or activate with: source .venv/bin/activate)"
