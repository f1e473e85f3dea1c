"""Exact resume: a run killed with SIGKILL (mid-step, or halfway through writing a checkpoint) or preempted with
SIGTERM / SIGUSR1, then resumed, ends with the trainable weights of an uninterrupted run.

Every run is a real `lightft fit` process on the tiny model with LoRA dropout 0.1 (so the random streams matter),
2 accumulated micro-batches per step, validation every 4 micro-batches (it must not move the training's random
streams) and a checkpoint every 2 steps. One process: bitwise equal. Two processes (DDP, gloo): equal to 1e-6 (the
same arithmetic, summed over ranks in one order). Another number of processes: the same global batch on 1 process
with twice the accumulation, equal to 2e-5 (different summation order; tests/test_distributed.py's tolerance).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lightft.checkpoints import read_checkpoint
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

STEPS = 12
BASE = ["--config", str(ROOT / "configs" / "debug" / "tiny.yaml"),
        "--model.init_args.peft.init_args.dropout", "0.1",
        "--trainer.max_steps", str(STEPS), "--trainer.accumulate_grad_batches", "2",
        "--trainer.val_check_interval", "4", "--trainer.limit_val_batches", "2",
        "--data.init_args.batch_size", "2", "--checkpoint.every_n_train_steps", "2"]  # fmt: skip
TRAINER = ROOT / "configs" / "trainer"
TWO = ["--config", str(TRAINER / "cpu2.yaml"), "--config", str(TRAINER / "ddp.yaml"),
       "--data.init_args.batch_size", "1"]  # fmt: skip


def fit(root: Path, *extra: str, callbacks: tuple[dict, ...] = (), wait: bool = True, timeout: int = 600):
    args = [sys.executable, "-m", "lightft.cli", "fit", *BASE, "--trainer.default_root_dir", str(root), *extra]
    args += [f"--trainer.callbacks+={json.dumps(c)}" for c in callbacks]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    if not wait:
        return proc
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def weights(root: Path) -> dict[str, torch.Tensor]:
    ckpt = read_checkpoint(root / "checkpoints" / "last.ckpt")  # a file, or FSDP2's directory of shards
    assert ckpt["global_step"] == STEPS
    return ckpt["state_dict"]


def assert_same(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        if atol == 0:
            assert torch.equal(a[name], b[name]), name
        else:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=name)


def kill_at(batch: int, **kwargs) -> dict:
    return {"class_path": "tests.helpers.callbacks.KillAt", "init_args": {"batch": batch, **kwargs}}


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict[str, torch.Tensor]:
    root = tmp_path_factory.mktemp("straight")
    code, out = fit(root)
    assert code == 0, out[-3000:]
    return weights(root)


def resume(root: Path, *extra: str) -> dict[str, torch.Tensor]:
    code, out = fit(root, *extra, "--ckpt_path", str(root / "checkpoints" / "last.ckpt"))
    assert code == 0, out[-3000:]
    return weights(root)


def test_killed_mid_step_resumes_bitwise(tmp_path, straight):
    batch = random.Random().randrange(5, 2 * STEPS - 2)  # a random micro-batch, often mid-step
    code, out = fit(tmp_path, callbacks=(kill_at(batch),))
    assert code == -signal.SIGKILL, (batch, out[-2000:])
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    # the last checkpoint before the kill: every 2 steps of 2 micro-batches (the kill comes before the save at a
    # checkpoint's own micro-batch: Lightning runs checkpoint callbacks last)
    assert saved == 2 * ((batch - 1) // 4), batch
    assert_same(resume(tmp_path), straight)


def test_killed_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, straight):
    code, out = fit(tmp_path, callbacks=(kill_at(9, during_save=True),))  # the save at step 6 is cut in half
    assert code == -signal.SIGKILL, out[-2000:]
    partial = list((tmp_path / "checkpoints" / ".partial").iterdir())
    assert [p.name for p in partial] == ["last.ckpt"] or len(partial) == 1  # the half-written file, hidden
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    assert_same(resume(tmp_path), straight)


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


def _wait_for_step(proc: subprocess.Popen, trace: Path, step: int) -> None:
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        lines = trace.read_text().split() if trace.exists() else []
        if any(line.isdigit() and int(line) >= step for line in lines):
            return
        time.sleep(0.2)
    raise AssertionError(f"the run never reached step {step}: {proc.communicate()[0][-2000:]}")


@pytest.mark.parametrize(
    ("signum", "two"), [(signal.SIGTERM, False), (signal.SIGUSR1, True)], ids=["sigterm", "sigusr1-ddp"]
)
def test_preemption_checkpoints_at_a_step_boundary_and_resumes(tmp_path, signum, two, straight, request):
    trace = tmp_path / "trace.txt"
    pace = {"class_path": "tests.helpers.callbacks.Pace", "init_args": {"seconds": 0.5, "path": str(trace)}}
    extra = TWO if two else ()
    proc = fit(tmp_path, *extra, callbacks=(pace,), wait=False)
    _wait_for_step(proc, trace, 3)
    os.kill(proc.pid, signum)  # the launching process (rank 0); it forwards the signal to the rank it started
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    name = signal.Signals(signum).name
    assert f"lightft: {name} received; stopped after step" in out, out[-3000:]
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert 3 <= saved["global_step"] < STEPS
    loader = saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert loader["served"] % loader["accumulate"] == 0  # at an optimizer-step boundary, not mid-accumulation
    expected = request.getfixturevalue("straight_two") if two else straight
    assert_same(resume(tmp_path, *extra), expected, atol=1e-6 if two else 0.0)
