"""Early stopping: stop a fit when a validation metric has stopped improving (Lightning's EarlyStopping).

Off unless `--early_stopping.monitor` names a metric (`val/loss`; PPO/GRPO: `eval/reward_mean` with `mode: max`).
The check runs at the end of each validation, before the checkpoints of that validation are written, so its state
(validations without improvement, best value) is in every checkpoint and a resumed run stops where an
uninterrupted one would (`VerifiedCheckpoint` and `Preemption` never checkpoint between a training step and the
validation that follows it). A key the method does not log is one line at startup (`lightft.callbacks.monitored`).
"""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.utilities import rank_zero_info

from lightft.callbacks.monitored import monitor_problem, require_logged
from lightft.errors import LightFTError

FLAG = "--early_stopping.monitor"


class EarlyStop(EarlyStopping):
    """Stop training when the monitored validation metric has not improved for `patience` validations.

    Args:
        monitor: The validation metric to watch (`val/loss`, `val/accuracy`, PPO/GRPO `eval/reward_mean`, ...);
            null: no early stopping.
        patience: Validations in a row without an improvement that stop the run.
        min_delta: The least change that counts as an improvement (a change of at most `min_delta` does not).
        mode: `min`: lower is better (losses); `max`: higher is better (accuracies, rewards).
    """

    def __init__(
        self,
        monitor: str | None = None,
        patience: int = 3,
        min_delta: float = 0.0,
        mode: Literal["min", "max"] = "min",
    ) -> None:
        if patience < 1 or min_delta < 0:
            raise LightFTError(f"early_stopping: patience must be >= 1, min_delta >= 0; got {patience}, {min_delta}.")
        super().__init__(
            monitor=monitor or "", patience=patience, min_delta=min_delta, mode=mode, check_on_train_epoch_end=False
        )
        self.monitor = monitor  # type: ignore[assignment]  # None: off
        self.stopped_step: int | None = None

    @property
    def checked_monitor(self) -> tuple[str, str] | None:
        """(flag, key) for the config-time check of `lightft.callbacks.monitored.check_monitors`."""
        return (FLAG, self.monitor) if self.monitor else None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Refuse a monitor this fit's validation never logs."""
        if self.monitor and stage == "fit":
            problem = monitor_problem(FLAG, self.monitor, pl_module, trainer.datamodule, trainer)
            if problem:
                raise LightFTError(problem)
        super().setup(trainer, pl_module, stage)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A resumed run that had already stopped (and whose patience was not raised) stops again at once."""
        if self.monitor and self.wait_count >= self.patience:
            trainer.should_stop = True
            rank_zero_info(
                f"lightft: early stopping: this run already stopped ({self.monitor} did not improve in "
                f"{self.wait_count} validations); raise --early_stopping.patience to train on."
            )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check the metric of this validation; say why when it stops the run."""
        if not self.monitor or self._should_skip_check(trainer):
            return
        require_logged(FLAG, self.monitor, trainer)
        self.stopping_reason_message = None
        super().on_validation_end(trainer, pl_module)
        if self.stopping_reason_message is not None:  # set only when this check stopped the run
            self.stopped_step = trainer.global_step
            rank_zero_info(f"lightft: early stopping after step {trainer.global_step}: {self._reason()}")

    def _reason(self) -> str:
        if self.stopping_reason == EarlyStoppingReason.PATIENCE_EXHAUSTED:
            delta = f" by more than {abs(self.min_delta):g}" if self.min_delta else ""
            return (
                f"{self.monitor} did not improve{delta} in the last {self.wait_count} validations "
                f"(best {float(self.best_score):.4f})"
            )
        return str(self.stopping_reason_message)

    def state_dict(self) -> dict[str, Any]:
        """Lightning's state (validations without improvement, best value, ...); nothing when off."""
        return super().state_dict() if self.monitor else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the count and the best value; the patience stays the one configured now (raise it to go on)."""
        patience = self.patience
        super().load_state_dict(state_dict)
        self.patience = patience
