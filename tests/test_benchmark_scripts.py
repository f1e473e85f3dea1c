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


def test_quantization_benchmark_runs_its_rows(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    rows = ["int8 static, histogram entropy", "NF4 (bitsandbytes)", "gguf q4_0", "QAT -> int4 weight-only g32"]
    command = [sys.executable, "benchmarks/quantization.py", "--tiny", "--runs", str(tmp_path), "--eval_examples", "4",
               "--prompts", "2", "--calibration_examples", "4", "--max_new_tokens", "4", "--only", *rows]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    table = (tmp_path / "results.md").read_text()
    for row in ["float (fp32, LoRA merged)", "int8 static, histogram entropy", "NF4 (bitsandbytes)", "GGUF q4_0",
                "QAT -> int4 weight-only g32"]:  # fmt: skip
        assert f"| {row} |" in table
