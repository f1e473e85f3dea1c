"""2-process DDP (gloo, CPU) gives the gradients of 1 process with twice the batch: the loss is normalised by the
trained tokens of the whole step over all ranks."""

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def first_step_gradients(tmp_path, name, *args):
    out = tmp_path / f"{name}.pt"
    command = [
        sys.executable, "-m", "lightft.cli", "fit", "--config", "configs/debug/tiny.yaml",
        "--trainer.default_root_dir", str(tmp_path / name), "--trainer.max_steps", "1",
        "--trainer.callbacks+=tests.helpers.callbacks.GradientDump", f"--trainer.callbacks.path={out}",
        "--model.init_args.peft", "lightft.peft.FullFineTune", *args,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    return torch.load(out, weights_only=True)


def test_ddp_two_ranks_equal_one_rank_with_twice_the_batch(tmp_path):
    one = first_step_gradients(tmp_path, "one", "--data.init_args.batch_size", "4")
    two = first_step_gradients(
        tmp_path, "two", "--data.init_args.batch_size", "2", "--trainer.strategy", "ddp", "--trainer.devices", "2"
    )
    assert one.keys() == two.keys() and len(one) > 10
    for name in one:
        # fp32 all-reduce sums in another order: agreement to 1e-6 relative
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6, msg=name)
