"""Preemption: SIGTERM / SIGUSR1 -> finish the optimizer step in progress, checkpoint, stop cleanly.

Lightning's own handlers act at the wrong moment for an exact resume: on SIGTERM it stops after the current
micro-batch without saving, and its SLURM SIGUSR1 handler saves from inside the signal handler, possibly halfway
through a gradient accumulation. This callback replaces them for the duration of training: the handler only notes
the signal (and forwards it to the processes Lightning launched); at the next optimizer-step boundary all ranks
agree (one all-reduce of a flag per step), write the checkpoint atomically and stop. Under SLURM with auto-requeue
(Lightning's `SLURMEnvironment`), SIGUSR1 saves Lightning's `hpc_ckpt_N.ckpt` and requeues the job through
`scontrol requeue`, and Lightning resumes from it when the job restarts; otherwise the checkpoint is
`<checkpoints>/last.ckpt`, resumed with `--ckpt_path last`. The process then exits with status 0.

A step that a validation follows is not such a boundary: a checkpoint taken between them would resume past the
validation (Lightning skips it), losing its early-stopping check and best-checkpoint candidate, so the checkpoint
waits for the next step. Nothing is validated after the checkpoint (Lightning would, for a stopped run).
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightft.callbacks.checkpoint import validation_follows
from lightft.checkpoints import save_atomically

SIGNALS = ("SIGTERM", "SIGUSR1")


class Preemption(pl.Callback):
    """Checkpoint at the next optimizer-step boundary after a preemption signal, then stop.

    Args:
        signals: Signal names that preempt the run (`SIGTERM`, `SIGUSR1`); empty to leave Lightning's handlers.
    """

    def __init__(self, signals: list[str] | None = None) -> None:
        self.signals = [getattr(signal, name) for name in (SIGNALS if signals is None else signals)]
        self.received = 0
        self.saved_to: Path | None = None
        self._previous: dict[int, Any] = {}
        self._trainer: pl.Trainer | None = None
        self._step = 0  # the optimizer steps taken when the last batch ended
        self._waited = False  # the checkpoint already waited a step for a validation

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Take over the signals (Lightning registered its handlers when fit began)."""
        self._trainer, self.received, self.saved_to, self._step = trainer, 0, None, trainer.global_step
        self._waited = False
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._note)

    def _note(self, signum: int, frame: FrameType | None) -> None:
        if not self.received:
            self.received = signum
            launcher = self._trainer.strategy.launcher if self._trainer is not None else None
            if launcher is not None and hasattr(launcher, "procs"):
                launcher.kill(signum)  # the ranks this process started (Lightning's subprocess launcher)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """At a step boundary: if any rank was signalled, every rank saves and stops.

        Under automatic optimization a batch ends a step when the optimizer stepped in it (`global_step` moved:
        Lightning counts a step when it runs the optimizer, at the end of an accumulation or of the epoch); under
        manual optimization every batch does.
        """
        stepped, self._step = trainer.global_step != self._step, trainer.global_step
        if not self.signals or (pl_module.automatic_optimization and not stepped):
            return
        signum = self._agree(trainer)
        if not signum:
            return
        if validation_follows(trainer) and not self._waited:  # at most one step: validating every step is possible
            self._waited = True
            return
        name = signal.Signals(signum).name
        requeue = signum == signal.SIGUSR1 and requeues_on_slurm(trainer)
        if requeue:
            # Lightning's name for it, which its SLURM resume reads back (the newest `hpc_ckpt_N.ckpt`); no public API
            path = Path(trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir))
        else:
            path = checkpoint_dir(trainer) / "last.ckpt"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_atomically(trainer, path)
        self.saved_to = path
        trainer.should_stop = True
        # Lightning validates a run told to stop; the resumed run would not know of it (private API, docs/design.md)
        trainer.fit_loop.epoch_loop._skip_next_val = True
        rank_zero_info(
            f"lightft: {name} received; stopped after step {trainer.global_step} with a checkpoint at {path}"
            + ("; requeueing the SLURM job" if requeue else f"; resume with --ckpt_path {path}")
        )
        if requeue and trainer.is_global_zero:
            _requeue()

    def _agree(self, trainer: pl.Trainer) -> int:
        """The signal any rank received (0 for none), the same on every rank."""
        import torch.distributed as dist

        if trainer.world_size == 1 or not (dist.is_available() and dist.is_initialized()):
            return self.received
        flag = torch.tensor([self.received], device=trainer.strategy.root_device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Give the signals back."""
        self._restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Give the signals back."""
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def requeues_on_slurm(trainer: pl.Trainer) -> bool:
    """Whether the run is under SLURM with auto-requeue (Lightning's `SLURMEnvironment`, `auto_requeue` on).

    The environment Lightning chose (a user's plugin, or the detected one) is on its accelerator connector; parallel
    strategies also carry it as `cluster_environment`, single-device ones do not (docs/design.md, private APIs).
    """
    environment = trainer._accelerator_connector.cluster_environment
    return isinstance(environment, SLURMEnvironment) and environment.auto_requeue


def checkpoint_dir(trainer: pl.Trainer) -> Path:
    """Where the run's checkpoints go: the checkpoint callback's directory, else `<run dir>/checkpoints`."""
    callback = trainer.checkpoint_callback
    dirpath = getattr(callback, "dirpath", None)
    return Path(dirpath) if dirpath else Path(trainer.default_root_dir) / "checkpoints"


def _requeue() -> None:
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array_job}_{task}" if array_job and task else str(SLURMEnvironment.job_id() or os.environ["SLURM_JOB_ID"])
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if result.returncode != 0:
        rank_zero_warn(f"scontrol requeue {job} failed ({result.stderr.strip()}); resubmit the job to resume.")
    else:
        rank_zero_info(f"requeued SLURM job {job}")
