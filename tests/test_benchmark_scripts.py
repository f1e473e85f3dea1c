"""The CPU benchmark scripts the docs cite still run (their quick mode, on the tiny model)."""

import os
import subprocess
import sys

from tests.conftest import ROOT


def test_dpo_cpu_benchmark_runs_its_three_rows():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "benchmarks/dpo_cpu.py", "--tiny", "--steps", "2", "--batch", "2"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    for row in ("DPO, live reference", "DPO, precomputed reference", "SFT on the chosen side"):
        assert row in result.stdout
