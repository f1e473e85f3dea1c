"""The preemption callback in-process, on a plain Lightning module: a signal noted mid-accumulation checkpoints at
the end of that optimizer step (or at the epoch's last batch, where Lightning steps early; after the next step when
a validation follows), SLURM auto-requeue is read from the cluster environment. Real `lightft fit` runs signalled
and resumed: tests/test_resume.py, tests/test_resume_distributed.py, tests/test_slurm.py,
tests/callbacks/test_early_stopping.py."""

import os
import signal

import lightning.pytorch as pl
import pytest
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader

from lightft.callbacks.preemption import Preemption, requeues_on_slurm

SLURM_VARIABLES = (
    "SLURM_NTASKS",
    "SLURM_JOB_NAME",
    "SLURM_NODEID",
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "TORCHELASTIC_RUN_ID",
)


class Linear(pl.LightningModule):
    """One linear layer fitting random rows: the smallest module with an optimizer."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class SignalAt(pl.Callback):
    """Delivers `signum` to this process just before micro-batch `batch` (0-based) starts; counts batches run."""

    def __init__(self, batch: int, signum: int = signal.SIGTERM) -> None:
        self.batch, self.signum, self.ran = batch, signum, 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx == self.batch:
            os.kill(os.getpid(), self.signum)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.ran += 1


def fit(tmp_path, signal_at: int, batches: int, accumulate: int = 3) -> tuple[Preemption, SignalAt, pl.Trainer]:
    preemption, signaller = Preemption(), SignalAt(signal_at)
    quiet = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=2, accumulate_grad_batches=accumulate,
                         callbacks=[signaller, preemption], default_root_dir=tmp_path, **quiet)  # fmt: skip
    trainer.fit(Linear(), DataLoader(torch.randn(batches, 4), batch_size=None))
    return preemption, signaller, trainer


@pytest.mark.parametrize(
    ("signal_at", "batches", "stops_after", "steps"),
    [(4, 12, 6, 2), (5, 12, 6, 2), (6, 12, 9, 3), (6, 7, 7, 3)],
    ids=["mid-step", "last-micro-batch-of-a-step", "first-of-a-step", "epoch-end-steps-early"],
)  # fmt: skip
def test_a_signal_checkpoints_at_the_end_of_the_optimizer_step(tmp_path, signal_at, batches, stops_after, steps):
    preemption, signaller, trainer = fit(tmp_path, signal_at, batches)
    assert preemption.received == signal.SIGTERM
    assert signaller.ran == stops_after and trainer.global_step == steps
    assert preemption.saved_to == tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(preemption.saved_to, weights_only=True)["global_step"] == steps
    assert signal.getsignal(signal.SIGTERM) is not preemption._note  # the handlers are given back


def test_no_signal_runs_to_the_end(tmp_path):
    preemption, signaller, trainer = fit(tmp_path, signal_at=-1, batches=6)
    assert not preemption.received and preemption.saved_to is None
    assert signaller.ran == 12 and trainer.global_step == 4  # 2 epochs of 2 steps


@pytest.fixture
def no_cluster(monkeypatch):
    for name in SLURM_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def one_task_job(monkeypatch):
    for name, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_NODEID": "0", "SLURM_PROCID": "0",
                        "SLURM_LOCALID": "0"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)


def test_a_single_device_run_requeues_where_lightning_detects_slurm(no_cluster):
    assert not requeues_on_slurm(pl.Trainer(accelerator="cpu", devices=1, logger=False))
    one_task_job(no_cluster)
    assert requeues_on_slurm(pl.Trainer(accelerator="cpu", devices=1, logger=False))
    no_cluster.setenv("TORCHELASTIC_RUN_ID", "1")  # torchrun inside SLURM: Lightning picks TorchElastic
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "GROUP_RANK": "0",
                        "MASTER_ADDR": "localhost", "MASTER_PORT": "12910"}.items():  # fmt: skip
        no_cluster.setenv(name, value)
    assert not requeues_on_slurm(pl.Trainer(accelerator="cpu", devices=1, logger=False))


@pytest.mark.parametrize("auto_requeue", [True, False])
def test_a_single_device_run_keeps_the_slurm_plugin(no_cluster, auto_requeue):
    one_task_job(no_cluster)
    trainer = pl.Trainer(accelerator="cpu", devices=1, plugins=[SLURMEnvironment(auto_requeue=auto_requeue)],
                         logger=False)  # fmt: skip
    assert requeues_on_slurm(trainer) == auto_requeue


@pytest.mark.parametrize("auto_requeue", [True, False])
def test_a_parallel_strategy_carries_the_slurm_plugin(no_cluster, auto_requeue):
    one_task_job(no_cluster)
    plugin = SLURMEnvironment(auto_requeue=auto_requeue)
    trainer = pl.Trainer(accelerator="cpu", devices=1, strategy=DDPStrategy(), plugins=[plugin], logger=False)
    assert trainer.strategy.cluster_environment is plugin
    assert requeues_on_slurm(trainer) == auto_requeue


class Validated(Linear):
    """Linear with a validation; remembers the step of each validation (the sanity check aside)."""

    def __init__(self) -> None:
        super().__init__()
        self.validated: list[int] = []

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log("val/loss", self.layer(batch).pow(2).mean())

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.validated.append(self.global_step)


def test_a_signal_where_a_validation_follows_checkpoints_after_the_next_step_and_validates_no_more(tmp_path):
    """A checkpoint between step 2 and its validation would resume past that validation (Lightning skips it)."""
    preemption, module = Preemption(), Validated()
    quiet = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, accumulate_grad_batches=2, val_check_interval=4,
                         callbacks=[SignalAt(3), preemption], default_root_dir=tmp_path, **quiet)  # fmt: skip
    trainer.fit(module, DataLoader(torch.randn(12, 4), batch_size=None), DataLoader(torch.randn(2, 4), batch_size=None))
    assert trainer.global_step == 3 and module.validated == [2]  # signalled in step 2, validated, saved after step 3
    assert torch.load(preemption.saved_to, weights_only=True)["global_step"] == 3
