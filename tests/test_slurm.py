"""`launch/slurm/fit.sbatch` on a real one-machine SLURM cluster (tests/slurm/cluster.sh: Debian's slurm-wlm + munge,
controller and node on localhost): a 2-task job trains the tiny model to the end under DDP and FSDP2, and a job
signalled with SIGUSR1 checkpoints, requeues itself (Lightning's SLURM environment) and resumes from that checkpoint.

Needs root to install and start SLURM: skipped on a developer machine without it, an error in CI."""

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"
PACE = "tests.helpers.callbacks.Pace"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """SLURM_CONF of a running one-node cluster; the daemons are stopped afterwards."""
    if os.geteuid() != 0:
        reason = "a local SLURM cluster needs root (apt-get install slurm-wlm munge, start slurmctld/slurmd)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("slurm")
    started = subprocess.run(["bash", str(CLUSTER), "start", str(state)], capture_output=True, text=True, timeout=600)
    assert started.returncode == 0, started.stdout + started.stderr
    env = {**os.environ, "SLURM_CONF": str(state / "slurm.conf")}
    yield env
    subprocess.run(["scancel", "--full", "--user", "root"], env=env, capture_output=True)
    subprocess.run(["bash", str(CLUSTER), "stop", str(state)], capture_output=True, timeout=60)


def submit(env: dict, out: Path, *args: str) -> str:
    """sbatch fit.sbatch with 2 CPU tasks on the tiny model; returns the job id."""
    cmd = ["sbatch", "--parsable", f"--chdir={ROOT}", "--ntasks-per-node=2", f"--output={out}/job-%j.out",
           str(ROOT / "launch/slurm/fit.sbatch"), "configs/debug/tiny.yaml", "--config", "configs/trainer/cpu2.yaml",
           "--trainer.default_root_dir", str(out / "run"), *args]  # fmt: skip
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def job(env: dict, job_id: str) -> dict:
    """`scontrol show job` as a dict (JobState, Restarts, ExitCode, ...)."""
    shown = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=env, capture_output=True, text=True)
    return dict(re.findall(r"(\w+)=(\S*)", shown.stdout))


def wait_for(env: dict, job_id: str, until, timeout: float = 300) -> dict:
    """Poll the job until `until(state)` holds; fails on a failed job or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = job(env, job_id)
        if state.get("JobState") in {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}:
            pytest.fail(f"job {job_id} {state['JobState']}: {state}")
        if until(state):
            return state
        time.sleep(0.5)
    pytest.fail(f"job {job_id} timed out in state {job(env, job_id).get('JobState')}")


def wait_until_idle(env: dict, node: str, timeout: float = 60) -> None:
    """Poll `scontrol show node` until the node runs and cleans up no job."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shown = subprocess.run(["scontrol", "-o", "show", "node", node], env=env, capture_output=True, text=True)
        state = dict(re.findall(r"(\w+)=(\S*)", shown.stdout)).get("State", "")
        if state.startswith("IDLE") and "COMPLETING" not in state:
            return
        time.sleep(0.5)
    pytest.fail(f"node {node} still busy after {timeout} s: {shown.stdout.strip()}")


def log(out: Path, job_id: str) -> str:
    return (out / f"job-{job_id}.out").read_text()


def trained_steps(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_sbatch_trains_two_tasks_to_the_end(slurm, tmp_path, strategy):
    job_id = submit(slurm, tmp_path, "--config", f"configs/trainer/{strategy}.yaml")
    state = wait_for(slurm, job_id, lambda s: s.get("JobState") == "COMPLETED")
    text = log(tmp_path, job_id)
    assert state["ExitCode"] == "0:0" and "1 node(s) x 2 task(s)" in text
    assert "MEMBER: 2/2" in text and "Starting with 2 processes" in text
    assert trained_steps(tmp_path / "run" / "checkpoints" / "last.ckpt") == 8


def test_a_signalled_job_checkpoints_requeues_and_resumes(slurm, tmp_path):
    progress = tmp_path / "progress"
    pace = f'{{"class_path": "{PACE}", "init_args": {{"seconds": 0.3, "path": "{progress}"}}}}'
    job_id = submit(slurm, tmp_path, "--config", "configs/trainer/ddp.yaml", "--trainer.max_steps", "40",
                    f"--trainer.callbacks+={pace}")  # fmt: skip
    deadline = time.monotonic() + 120
    while not (progress.exists() and len(progress.read_text().splitlines()) >= 7):
        assert time.monotonic() < deadline, log(tmp_path, job_id)
        time.sleep(0.2)
    node = job(slurm, job_id)["BatchHost"]
    # What SLURM sends 90 s before the time limit (#SBATCH --signal=SIGUSR1@90), sent now.
    subprocess.run(["scancel", "--signal=USR1", job_id], env=slurm, check=True)
    requeued = wait_for(slurm, job_id, lambda s: s.get("Restarts") == "1" and s.get("JobState") != "COMPLETING")
    if requeued["JobState"] == "PENDING":  # SLURM holds a requeued job back ~2 min; the test lets it go now,
        # once the old allocation is released and a second has passed: slurmd revokes the old credential with
        # one-second resolution and kills a restart whose credential is from that same second ("Job credential
        # revoked", the job FAILED without running)
        wait_until_idle(slurm, node)
        time.sleep(2)
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], env=slurm, check=True)
    state = wait_for(slurm, job_id, lambda s: s.get("JobState") == "COMPLETED")
    assert state["Restarts"] == "1" and state["ExitCode"] == "0:0"

    text = log(tmp_path, job_id)
    hpc = tmp_path / "run" / "hpc_ckpt_1.ckpt"
    # lightft's Preemption callback: the checkpoint at the next step boundary, then Lightning's requeue command
    assert "lightft: SIGUSR1 received; stopped after step" in text and f"requeued SLURM job {job_id}" in text
    assert "restart 1:" in text
    assert f"Restored all states from the checkpoint at {hpc}" in text
    signalled_at = trained_steps(hpc)
    assert 6 <= signalled_at < 40
    lines = progress.read_text().splitlines()
    starts = [int(line.split()[1]) for line in lines if line.startswith("start")]
    assert starts == [0, signalled_at] and lines[-1] == "40"  # the second run went on from the checkpoint
    assert trained_steps(tmp_path / "run" / "checkpoints" / "last.ckpt") == 40
