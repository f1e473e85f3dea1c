"""The launchers' own logic, with stand-in `srun` / `scontrol` that record their arguments (no SLURM here): the
task-per-device check, the rendezvous, what reaches `lightft fit`, and resuming after a requeue."""

import os
import subprocess

import pytest

from tests.conftest import ROOT

SBATCH = ROOT / "launch" / "slurm" / "fit.sbatch"


@pytest.fixture
def stubs(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/srun.args\n')
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho node-a\necho node-b\n")
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    return bin_dir


def run_sbatch(stubs, *args, **env):
    base = {"PATH": f"{stubs}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_JOB_ID": "1234",
            "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS_PER_NODE": "2(x2)", "SLURM_GPUS_ON_NODE": "2"}  # fmt: skip
    return subprocess.run(
        ["bash", str(SBATCH), *args], cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=60
    )


def test_sbatch_starts_one_task_per_device_with_the_job_geometry(stubs):
    result = run_sbatch(stubs, "configs/debug/tiny.yaml", "--trainer.max_steps", "3")
    assert result.returncode == 0, result.stderr
    args = (stubs.parent / "srun.args").read_text().split()
    assert args[:4] == ["--kill-on-bad-exit=1", ".venv/bin/python", "-m", "lightft.cli"]
    assert args[args.index("--trainer.num_nodes") + 1] == "2" and args[args.index("--trainer.devices") + 1] == "2"
    assert "--ckpt_path" not in args and args[-2:] == ["--trainer.max_steps", "3"]
    assert "master node-a:21234" in result.stdout


def test_sbatch_resumes_a_requeued_job(stubs):
    assert run_sbatch(stubs, "configs/debug/tiny.yaml", SLURM_RESTART_COUNT="1").returncode == 0
    args = (stubs.parent / "srun.args").read_text().split()
    assert args[-2:] == ["--ckpt_path", "hpc"]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ((), {}, "give the recipe"),
        (("configs/missing.yaml",), {}, "no config at configs/missing.yaml"),
        (("configs/debug/tiny.yaml",), {"SLURM_GPUS_ON_NODE": "4"}, "submit with --ntasks-per-node=4"),
    ],
)
def test_sbatch_refuses_bad_submissions(stubs, args, env, message):
    result = run_sbatch(stubs, *args, **env)
    assert result.returncode == 2 and message in result.stderr
    assert not (stubs.parent / "srun.args").exists()  # nothing was started


def test_torchrun_launcher_passes_the_geometry(tmp_path):
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\ncase "$2" in *cuda*) echo 0;; *) echo "$@" > {tmp_path}/args;; esac\n')
    fake.chmod(0o755)
    env = {**os.environ, "LIGHTFT_PYTHON": str(fake), "NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "node-a"}
    result = subprocess.run(["bash", "launch/torchrun.sh", "configs/debug/tiny.yaml"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    args = (tmp_path / "args").read_text().split()
    assert args[:2] == ["-m", "torch.distributed.run"] and args[args.index("--node_rank") + 1] == "1"
    assert args[args.index("--nproc_per_node") + 1] == "1" and args[args.index("--trainer.num_nodes") + 1] == "2"
