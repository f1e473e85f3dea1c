"""Soak: 1,000 optimizer steps of the tiny model in one process, as 4 resumed segments of 250 with a checkpoint every
50 steps and validation every 125, through the CLI. After the first segment (imports, caches and allocator pools
warm up there) open file descriptors may not grow at all beyond a small slack, and resident memory by at most
64 MiB over the remaining 750 steps: leaks per step or per save would show here (one leaked descriptor per save is
+15, one leaked batch of activations per step is hundreds of MiB)."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest
import torch

from lightft.cli import main
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def test_a_thousand_steps_with_checkpoints_and_resumes_do_not_leak(tmp_path):
    run = tmp_path / "run"
    args = ["fit", "--config", str(ROOT / "configs" / "debug" / "tiny.yaml"), "--trainer.default_root_dir", str(run),
            "--trainer.val_check_interval", "125", "--trainer.check_val_every_n_epoch", "null",
            "--trainer.limit_val_batches", "2", "--trainer.max_epochs", "-1",
            "--trainer.enable_progress_bar", "false", "--checkpoint.every_n_train_steps", "50",
            "--data.init_args.batch_size", "2"]  # fmt: skip
    fds, rss = [], []
    for segment in range(1, 5):
        resume = ["--ckpt_path", str(run / "checkpoints" / "last.ckpt")] if segment > 1 else []
        main([*args, "--trainer.max_steps", str(250 * segment), *resume])
        gc.collect()
        fds.append(open_fds())
        rss.append(rss_bytes())
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 1000
    print("soak fds", fds, "rss MiB", [round(r / 2**20, 1) for r in rss])
    assert max(fds[1:]) <= fds[0] + 3, fds
    assert rss[-1] - rss[0] <= 64 * 2**20, [r / 2**20 for r in rss]
