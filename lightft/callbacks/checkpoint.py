"""ModelCheckpoint that writes atomically and reads every checkpoint back before it replaces the previous one.

A checkpoint is only useful if it resumes: each file is written under a hidden name, re-opened (`weights_only=True`,
memory-mapped) and must hold exactly the module's trainable tensors with their shapes, none empty; only then is it
renamed into place (`lightft.checkpoints.save_atomically`). A crash (even `kill -9`) during a save leaves the
previous `last.ckpt` whole.

A save that a validation follows waits for the end of that validation: a checkpoint taken between a training step
and its validation resumes past the validation (Lightning skips it), which would lose that validation's early
stopping check and best-checkpoint candidate. `BestCheckpoint` keeps `best.ckpt`, the checkpoint of the best
validation so far, beside `last.ckpt`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal
from weakref import proxy

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from lightft.callbacks.monitored import declared_metrics, monitor_problem, require_logged, validation_problem
from lightft.checkpoints import recover_interrupted, save_atomically
from lightft.errors import LightFTError

BEST = "best"  # best.ckpt
FLAG = "--best.monitor"
AUTO_MONITOR = "val/loss"


class VerifiedCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint (same arguments); every checkpoint is written atomically and read back first."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Also undo a directory swap that a crash interrupted (the previous checkpoint is put back)."""
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and self.dirpath:
            recover_interrupted(self.dirpath)

    _after_validation = False  # a save due at a step waits for the validation that follows it

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Save every `every_n_train_steps`; when a validation follows the step, after it (`on_validation_end`)."""
        every = self._every_n_train_steps
        if (
            every >= 1
            and trainer.global_step % every == 0
            and not self._should_skip_saving_checkpoint(trainer)
            and not self._should_save_on_train_epoch_end(trainer)
            and validation_follows(trainer)
        ):
            self._after_validation = True
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A save that waited for this validation, else Lightning's own saves at the end of a validation."""
        if not self._after_validation:
            super().on_validation_end(trainer, pl_module)
            return
        self._after_validation = False
        if not self._should_skip_saving_checkpoint(trainer):
            metrics = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, metrics)
            self._save_last_checkpoint(trainer, metrics)

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        module = trainer.lightning_module
        save_atomically(trainer, filepath, self.save_weights_only, check=lambda path: verify_checkpoint(path, module))
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))


class BestCheckpoint(VerifiedCheckpoint):
    """`best.ckpt` beside `last.ckpt`: the checkpoint of the validation with the best monitored value so far.

    Written at the end of each validation that beats every earlier one (atomically and read back, like every
    checkpoint), into the directory of the run's other checkpoints. It goes before the run's other checkpoint
    callback in `trainer.callbacks` (`lightft fit` orders them so): the `last.ckpt` written at the same validation
    then records it, and a resumed run goes on comparing with it.

    Args:
        monitor: The validation metric; `auto`: `val/loss` when the method's validation logs it and the run
            validates (SFT, reward models, the DPO family), else no best.ckpt (PPO/GRPO: name `eval/reward_mean`
            with `mode: max`); null: no best.ckpt.
        mode: `min`: lower is better (losses); `max`: higher is better (accuracies, rewards).
    """

    def __init__(self, monitor: str | None = "auto", mode: Literal["min", "max"] = "min") -> None:
        super().__init__(
            filename=BEST,
            mode=mode,
            save_top_k=1,
            save_last=False,
            save_on_train_epoch_end=False,
            enable_version_counter=False,
            auto_insert_metric_name=False,
        )
        self.requested = monitor
        self.monitor = None if monitor == "auto" else monitor
        self.best_step: int | None = None  # the optimizer steps behind best.ckpt

    @property
    def checked_monitor(self) -> tuple[str, str] | None:
        """(flag, key) for the config-time check of `lightft.callbacks.monitored.check_monitors` (not `auto`)."""
        return (FLAG, self.monitor) if self.monitor and self.requested != "auto" else None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Choose the `auto` metric, refuse one this fit never logs; write beside the run's other checkpoints."""
        if stage == "fit" and self.requested == "auto":
            declared = declared_metrics(pl_module)
            logged = declared is None or AUTO_MONITOR in declared
            self.monitor = AUTO_MONITOR if logged and not validation_problem(trainer.datamodule, trainer) else None
        elif stage == "fit" and self.monitor:
            problem = monitor_problem(FLAG, self.monitor, pl_module, trainer.datamodule, trainer)
            if problem:
                raise LightFTError(problem)
        other = next((c for c in trainer.checkpoint_callbacks if c is not self and getattr(c, "dirpath", None)), None)
        if other is not None:
            self.dirpath = other.dirpath
        with warnings.catch_warnings():  # the other checkpoint callback says so already
            warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
            super().setup(trainer, pl_module, stage)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Replace best.ckpt when this validation's value beats every earlier one."""
        if self.monitor is None or self._should_skip_saving_checkpoint(trainer):
            return
        if self.requested == "auto" and self.monitor not in trainer.callback_metrics:
            self.monitor = None  # a method that declares no metrics and logs no val/loss: no best.ckpt
            return
        require_logged(FLAG, self.monitor, trainer)
        super().on_validation_end(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Say which step best.ckpt holds."""
        if self.monitor and self.best_step is not None and self.best_model_score is not None:
            rank_zero_info(
                f"lightft: {self.best_model_path} holds step {self.best_step} "
                f"({self.monitor} {float(self.best_model_score):.4f}, mode {self.mode})"
            )

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        self.best_step = trainer.global_step  # before the save: the checkpoint records it
        super()._save_checkpoint(trainer, filepath)

    def state_dict(self) -> dict[str, Any]:
        """Lightning's record of the best value and file, and its step; nothing when off."""
        return {**super().state_dict(), "best_step": self.best_step} if self.monitor else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the best value; best.ckpt is found by name, so a run directory that moved keeps it."""
        if not self.monitor:
            return
        super().load_state_dict({**state_dict, "dirpath": self.dirpath})
        scores, path = list(self.best_k_models.values()), self.format_checkpoint_name({})
        self.best_k_models = {path: scores[0]} if scores else {}
        if scores:
            self.kth_best_model_path = self.best_model_path = path
        self.best_step = state_dict.get("best_step")


def validation_follows(trainer: pl.Trainer) -> bool:
    """Whether Lightning validates right after the training batch that just ended (call from `on_train_batch_end`).

    The epoch loop's own decision (`_should_check_val_fx`, a private API); False when nothing would be validated
    (no validation batches, or not known yet: before the first validation or sanity check) or when the loop was
    told to skip it (`Preemption` stopping the run).
    """
    batches = trainer.num_val_batches
    loop = trainer.fit_loop.epoch_loop
    if not trainer.enable_validation or not sum(batches) or getattr(loop, "_skip_next_val", False):
        return False
    return bool(loop._should_check_val_fx(trainer.fit_loop._data_fetcher))


def verify_checkpoint(path: str | Path, module: pl.LightningModule) -> None:
    """Raise if `path` does not hold exactly `module`'s trainable tensors (non-empty, same shapes)."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["state_dict"]
    expected = {name: p.shape for name, p in module.named_parameters() if p.requires_grad}
    if set(state) != set(expected):
        extra, missing = sorted(set(state) - set(expected)), sorted(set(expected) - set(state))
        raise RuntimeError(f"checkpoint {path} is inconsistent: extra {extra[:3]}, missing {missing[:3]}")
    for name, shape in expected.items():
        if state[name].numel() == 0 or state[name].shape != shape:
            raise RuntimeError(
                f"checkpoint {path}: tensor {name} has shape {tuple(state[name].shape)}, expected {shape}"
            )
