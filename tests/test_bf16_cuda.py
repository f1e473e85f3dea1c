"""bf16 end to end on CUDA: a `bf16-true` run trains, precomputes DPO's reference, predicts, exports and generates
in bfloat16 on the GPU. Skipped without CUDA; run on a GPU machine with `pytest -m gpu`."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from tests.conftest import ROOT

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
BF16 = ["--config", "configs/trainer/gpu1.yaml", "--trainer.precision", "bf16-true"]


def lightft(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-m", "lightft.cli", *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_sft_trains_predicts_exports_and_generates_in_bf16(tmp_path):
    run = tmp_path / "sft"
    lightft("fit", "--config", "configs/debug/tiny.yaml", *BF16, "--trainer.default_root_dir", str(run),
            "--trainer.max_steps", "3")  # fmt: skip
    ckpt = run / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["lightft_precision"] == "bf16-true"
    lightft("predict", "--config", "configs/debug/tiny.yaml", *BF16, "--trainer.default_root_dir", str(run),
            "--ckpt_path", str(ckpt), "--data.init_args.predict", "data/quickstart/val.jsonl",
            "--model.init_args.generation.max_new_tokens", "4")  # fmt: skip
    assert len(next((run / "predictions").glob("*.jsonl")).read_text().splitlines()) == 100
    lightft("export", "--ckpt", str(ckpt), "--out", str(tmp_path / "merged"), "--merge", "true")
    with safe_open(tmp_path / "merged" / "model.safetensors", "pt") as weights:
        assert {weights.get_slice(k).get_dtype() for k in weights.keys()} == {"BF16"}  # noqa: SIM118
    out = lightft("generate", "--model", str(tmp_path / "merged"), "--prompt", "Mei wants two lattes.",
                  "--max_new_tokens", "4").stdout  # fmt: skip
    assert "on cuda, bfloat16" in out and "--- completion" in out


def test_dpo_precomputes_its_reference_in_bf16_on_the_gpu(tmp_path):
    run = tmp_path / "dpo"
    lightft("fit", "--config", "configs/debug/tiny_dpo.yaml", *BF16, "--trainer.default_root_dir", str(run),
            "--trainer.max_steps", "2", "--model.init_args.reference", "precomputed")  # fmt: skip
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    reference = saved["reference_logps"]["train"]
    assert reference.dtype == torch.float32 and torch.isfinite(reference).all() and (reference < 0).all()
