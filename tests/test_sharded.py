"""Sharded training's checkpoints: DeepSpeed ZeRO-2/3 on 2 CPU ranks equals 1 process and its directories export;
FSDP2 checkpoints (one gathered file, or a directory of shards) resume to the uninterrupted run. Same runs and
tolerances as tests/test_distributed.py, whose helpers these are."""

import subprocess
import sys

import pytest
import torch

from lightft.checkpoints import read_checkpoint
from lightft.commands.export import load_exported
from tests.conftest import ROOT
from tests.test_distributed import assert_same_tensors, fit, traced

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("method", "stages"), [("", ("zero2", "zero3")), ("_dpo", ("zero3",))], ids=["sft", "dpo"])
def test_deepspeed_zero_on_two_ranks_equals_one_rank(tmp_path, tiny_weights_dir, method, stages):
    """DeepSpeed ZeRO-2/3 on 2 CPU ranks (DeepSpeed's CPU accelerator, gloo): the step losses and the weights
    consolidated from the ZeRO partitions by `lightft export` equal 1 process. DeepSpeed keeps gradients in its own
    partitioned buffers, so they are compared through the weights. The base comes from disk: under ZeRO-3
    transformers initializes a random model partitioned, from other random draws than 1 process."""
    saved = ["--model.init_args.model.path", str(tiny_weights_dir), "--model.init_args.model.random_init", "false"]
    one = traced(tmp_path, method, "single", *saved, grads=False)
    for strategy in stages:
        two = traced(tmp_path, method, strategy, *saved, grads=False)
        assert two["replicas"]["spread"] == 0.0, strategy
        torch.testing.assert_close(torch.tensor(two["losses"]), torch.tensor(one["losses"]), rtol=1e-5, atol=1e-6)
        assert_same_tensors(two["weights"], one["weights"], rtol=0, atol=2e-5)
    ckpt = tmp_path / f"{method or '_sft'}-zero3" / "checkpoints" / "last.ckpt"
    assert ckpt.is_dir()  # one partition per rank: exported in one process from DeepSpeed's fp32 partitions
    assert_exports(ckpt, tmp_path / "exported", two["weights"])


@pytest.fixture(scope="module")
def fsdp2_straight(tmp_path_factory) -> dict:
    """4 FSDP2 steps without interruption (shared by both resume tests)."""
    return fit(tmp_path_factory.mktemp("straight"), "", "fsdp2", steps=4)


@pytest.mark.parametrize("sharded", [False, True], ids=["gathered-file", "sharded-directory"])
def test_fsdp2_checkpoint_resumes_to_the_uninterrupted_run(tmp_path, fsdp2_straight, sharded):
    """2 steps, save (one gathered file, or a directory with one shard per rank), resume to 4 steps: the weights
    equal 4 steps straight (fp32 on CPU, same reduction order: exact up to 1e-6)."""
    straight = fsdp2_straight
    save = ["--trainer.strategy.init_args.save_distributed_checkpoint", str(sharded).lower()]
    fit(tmp_path / "first", "", "fsdp2", *save, steps=2, read=False)
    ckpt = tmp_path / "first" / "_sft-fsdp2" / "checkpoints" / "last.ckpt"
    assert ckpt.is_dir() == sharded
    resumed = fit(tmp_path / "resumed", "", "fsdp2", "--ckpt_path", str(ckpt), steps=4)
    assert_same_tensors(resumed["weights"], straight["weights"], rtol=0, atol=1e-6)
    if sharded:  # the shard directory also exports, in one process, to an adapter holding the same weights
        assert_exports(ckpt, tmp_path / "exported", read_checkpoint(ckpt)["state_dict"])


def assert_exports(ckpt, out, weights: dict) -> None:
    """`lightft export` of `ckpt` writes a peft adapter that reloads with exactly `weights` (LoRA tensors)."""
    export = [sys.executable, "-m", "lightft.cli", "export", "--ckpt", str(ckpt), "--out", str(out)]
    result = subprocess.run(export, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    model, _ = load_exported(out)
    exported = {f"model.{n}": p for n, p in model.named_parameters() if "lora_" in n}
    assert_same_tensors(exported, weights, rtol=0, atol=0)
