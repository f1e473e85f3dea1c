"""Every GPU strategy on one GPU (world size 1 still runs the wrapping, sharding and checkpoint code paths), bf16,
for SFT-LoRA, QLoRA and DPO. Skipped without CUDA; run them on a GPU machine with `pytest -m gpu`."""

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

STRATEGIES = ["ddp", "fsdp", "fsdp2", "deepspeed_zero1", "deepspeed_zero2", "deepspeed_zero3"]
QLORA = ["--model.init_args.peft", "lightft.peft.QLoRA", "--model.init_args.peft.init_args.quant_storage", "bfloat16"]


def gpu_fit(tmp_path, recipe: str, strategy: str, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "lightft.cli", "fit", "--config", f"configs/debug/{recipe}.yaml",
        "--config", "configs/trainer/gpu1.yaml", "--config", f"configs/trainer/{strategy}.yaml",
        "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.max_steps", "3", *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("recipe", ["tiny", "tiny_dpo"])
def test_lora_on_one_gpu(tmp_path, recipe, strategy):
    result = gpu_fit(tmp_path, recipe, strategy)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "fsdp2", "deepspeed_zero2"])
def test_qlora_on_one_gpu(tmp_path, strategy):
    result = gpu_fit(tmp_path, "tiny", strategy, *QLORA)
    assert result.returncode == 0, result.stderr[-4000:]


def test_qlora_under_zero3_is_refused_before_loading(tmp_path):
    result = gpu_fit(tmp_path, "tiny", "deepspeed_zero3", *QLORA)
    assert result.returncode == 2 and "cannot be partitioned by DeepSpeed ZeRO-3" in result.stderr
