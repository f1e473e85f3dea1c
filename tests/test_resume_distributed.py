"""Exact resume on two processes (DDP, gloo): killed together, preempted with SIGUSR1, or resumed on one process
(DDP and FSDP2); the helpers and the run's shape are tests/test_resume.py's."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from tests.test_resume import TRAINER, TWO, assert_same, fit, kill_at, preempt, resume, weights

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def straight_two(tmp_path_factory) -> dict[str, torch.Tensor]:
    root = tmp_path_factory.mktemp("straight-two")
    code, out = fit(root, *TWO)
    assert code == 0, out[-3000:]
    return weights(root)


def test_two_processes_killed_resume_to_the_same_weights(tmp_path, straight_two):
    code, out = fit(tmp_path, *TWO, callbacks=(kill_at(7, group=True),))  # every rank dies at micro-batch 7
    assert code == -signal.SIGKILL, out[-2000:]
    assert_same(resume(tmp_path, *TWO), straight_two, atol=1e-6)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_processes_resume_on_one(tmp_path, strategy):
    """2 processes x 1 micro-batch x 2 accumulated to step 4, then 1 process x 1 x 4 to the end == 2 processes
    throughout. DDP: one checkpoint file; FSDP2: a directory of shards, resharded from 2 ranks to 1 on load.
    Without dropout: a rank's random stream cannot be split over another number of ranks. Resuming with another
    global batch (1 x 1 x 2) is refused first, and leaves the checkpoint as it was."""
    flags = ["--model.init_args.peft.init_args.dropout", "0.0", "--config", str(TRAINER / f"{strategy}.yaml")]
    if strategy == "fsdp2":
        flags += ["--trainer.strategy.init_args.save_distributed_checkpoint", "true"]
    two = [*TWO[:2], *flags, "--data.init_args.batch_size", "1"]  # cpu2.yaml, then this strategy
    code, out = fit(tmp_path / "straight", *two)
    assert code == 0, out[-2000:]
    code, out = fit(tmp_path / "run", *two, "--trainer.max_steps", "4")
    assert code == 0, out[-2000:]
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert last.is_dir() == (strategy == "fsdp2")
    before = snapshot(last)
    one = [*flags, "--trainer.devices", "1", "--data.init_args.batch_size", "1"]
    code, out = fit(tmp_path / "run", *one, "--ckpt_path", str(last))
    assert code != 0 and "--ckpt_path: the checkpoint's global batch is 4 items" in out, out[-2000:]
    assert snapshot(last) == before
    resumed = resume(tmp_path / "run", *one, "--trainer.accumulate_grad_batches", "4")
    assert_same(resumed, weights(tmp_path / "straight"), atol=2e-5)


def snapshot(path: Path) -> dict[str, bytes]:
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    return {str(f): f.read_bytes() for f in files if f.is_file()}


def test_sigusr1_stops_every_rank_at_a_step_boundary_and_resumes(tmp_path, straight_two):
    assert_same(preempt(tmp_path, signal.SIGUSR1, *TWO), straight_two, atol=1e-6)
