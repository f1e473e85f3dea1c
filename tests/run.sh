#!/usr/bin/env bash
# Set up (launch/setup_env.sh) and run the whole test suite, offline, on CPU.
#
#   bash tests/run.sh [pytest args]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
LIGHTFT_EXTRAS=dev,mlflow,wandb bash launch/setup_env.sh  # the logger tests run MLflow and W&B (offline)
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# two workers (the machines have 2 cores; most tests wait on subprocesses), whole files per worker so a module's
# shared runs are made once; LIGHTFT_TEST_WORKERS=0 runs everything in this process
exec .venv/bin/python -m pytest -n "${LIGHTFT_TEST_WORKERS:-2}" --dist loadfile "$@"
