"""Exact resume on one process: a run killed with SIGKILL (mid-step, or halfway through writing a checkpoint) or
preempted with SIGTERM, then resumed, ends with the trainable weights of an uninterrupted run (two processes:
tests/test_resume_distributed.py).

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
    # the first checkpoint of step 6 was cut in half under its hidden name, and is not loadable: best.ckpt (that
    # validation improved val/loss; best.ckpt is decided before the step's other checkpoints, then last.ckpt)
    assert [p.name for p in partial] == ["best.ckpt"], [p.name for p in partial]
    with pytest.raises(RuntimeError, match="PytorchStreamReader"):
        torch.load(partial[0], weights_only=True)
    assert not (tmp_path / "checkpoints" / "epoch=0-step=6.ckpt").exists()
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    assert torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=True)["global_step"] < 6  # still whole
    assert_same(resume(tmp_path), straight)


def _wait_for_step(proc: subprocess.Popen, trace: Path, step: int) -> None:
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        lines = trace.read_text().split() if trace.exists() else []
        if any(line.isdigit() and int(line) >= step for line in lines):
            return
        time.sleep(0.2)
    raise AssertionError(f"the run never reached step {step}: {proc.communicate()[0][-2000:]}")


def preempt(tmp_path: Path, signum: int, *extra: str) -> dict[str, torch.Tensor]:
    """Signal a paced run after step 3; it must checkpoint at a step boundary and exit 0. The resumed weights."""
    trace = tmp_path / "trace.txt"
    pace = {"class_path": "tests.helpers.callbacks.Pace", "init_args": {"seconds": 0.5, "path": str(trace)}}
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
    return resume(tmp_path, *extra)


def test_sigterm_checkpoints_at_a_step_boundary_and_resumes_bitwise(tmp_path, straight):
    assert_same(preempt(tmp_path, signal.SIGTERM), straight)


def test_a_mixture_killed_mid_epoch_resumes_bitwise(tmp_path):
    """Two sources drawn 3:1 (one upsampled past its size): killed mid-step, resumed, equal to a straight run."""
    mixture = tmp_path / "mixture.yaml"
    shapes = ROOT / "tests" / "assets" / "shapes"
    sources = [{"path": str(ROOT / "data" / "quickstart" / "train.jsonl"), "max_examples": 24, "weight": 3.0},
               {"path": str(shapes / "sharegpt.jsonl"), "weight": 1.0}]  # fmt: skip
    mixture.write_text(json.dumps({"data": {"init_args": {"train": sources}}}))
    code, out = fit(tmp_path / "straight", "--config", str(mixture))
    assert code == 0 and "mixture of 2" in out, out[-3000:]
    batch = random.Random().randrange(5, 2 * STEPS - 2)
    code, out = fit(tmp_path / "killed", "--config", str(mixture), callbacks=(kill_at(batch),))
    assert code == -signal.SIGKILL, (batch, out[-2000:])
    assert_same(resume(tmp_path / "killed", "--config", str(mixture)), weights(tmp_path / "straight"))
