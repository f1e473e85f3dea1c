"""What a training module puts into a checkpoint and takes out of it, and how a resumed run continues exactly.

A checkpoint holds the trainable weights only (never a frozen base), the hyper-parameters as plain data, the run's
precision (export rebuilds the model in it) and every rank's random states. On resume the random streams continue
where the checkpoint left them (a different number of ranks is reseeded, with a warning), Lightning's in-epoch batch
counters are re-counted for the new shape, and validation during fit never moves the training's random streams.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn

from lightft.checkpoints.hparams import plain_hparams
from lightft.checkpoints.random_state import RNG_KEY, gather_rng_states, rng_state, set_rng_state
from lightft.strategies import check_trainable_keys

PRECISION_KEY = "lightft_precision"  # checkpoint entry: the run's trainer.precision


class CheckpointHooks(pl.LightningModule):
    """The checkpoint and resume hooks of `LightFTModule` (trainable weights, hyper-parameters, random states)."""

    trained_precision: str | None = None  # the run's `trainer.precision`, read from a checkpoint (export)

    def attached_trainer(self) -> pl.Trainer | None:
        """The Trainer running this module, or None (built in Python, e.g. by `lightft export`)."""
        try:
            return self.trainer
        except RuntimeError:  # Lightning's answer when no Trainer is attached; it has no public test for it
            return None

    def trainable_keys(self) -> set[str]:
        """State-dict keys of the parameters that train (what a checkpoint stores)."""
        return {name for name, param in self.named_parameters() if param.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only trainable weights; make hyper-parameters plain data (loadable with `weights_only=True`); add
        every rank's random state (all ranks run this hook).
        """  # noqa: D205
        keys = self.trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keys}
        if not checkpoint["state_dict"] and self.global_rank == 0:  # sharding strategies gather onto rank 0 only
            raise RuntimeError("refusing to write a checkpoint without trainable weights")
        checkpoint["hyper_parameters"] = plain_hparams(self)
        if self.attached_trainer() is not None:
            checkpoint[RNG_KEY] = gather_rng_states(self.trainer)
            checkpoint[PRECISION_KEY] = str(self.trainer.precision)  # export rebuilds the model in the run's dtype

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Fail clearly when the checkpoint lacks weights this model trains (another model or strategy); keep the
        random states for `on_train_start`.
        """  # noqa: D205
        self._resume_rng = checkpoint.get(RNG_KEY)
        self.trained_precision = checkpoint.get(PRECISION_KEY, self.trained_precision)
        if "state_dict" not in checkpoint:
            return  # a sharding strategy (FSDP2) loaded the weights itself and checked their keys
        check_trainable_keys(self, checkpoint["state_dict"], "the checkpoint")

    def on_train_start(self) -> None:
        """A resumed run continues each rank's random streams where the checkpoint left them (after the sanity
        check, which the uninterrupted run did not repeat at this point).
        """  # noqa: D205
        _align_batch_progress(self.trainer)
        states, self._resume_rng = getattr(self, "_resume_rng", None), None
        if not states:
            return
        if len(states) == self.trainer.world_size:
            set_rng_state(states[self.global_rank])
            return
        seed = torch.initial_seed() + 1_000_003 * self.trainer.global_step + self.global_rank
        pl.seed_everything(seed % 2**32, workers=True, verbose=False)
        rank_zero_warn(
            f"the checkpoint holds the random states of {len(states)} rank(s), this run has "
            f"{self.trainer.world_size}: each rank is reseeded from the seed, step and rank (dropout masks and samples "
            "differ from an uninterrupted run; weights, optimizer and data order do not)."
        )

    def on_validation_start(self) -> None:
        """Validation during fit does not move the training's random streams (resume and val settings cannot
        change the training trajectory).
        """  # noqa: D205
        self._rng_before_validation = rng_state() if self.trainer.state.fn == "fit" else None

    def on_validation_end(self) -> None:
        """Put the training's random streams back as they were before validation."""
        state = getattr(self, "_rng_before_validation", None)
        if state is not None:
            set_rng_state(state)
            self._rng_before_validation = None


def warn_mid_step_validation(trainer: pl.Trainer | None) -> None:
    """Warn when validation (and a checkpoint saved after it) would fall inside an optimizer step."""
    interval = getattr(trainer, "val_check_interval", None)
    accumulate = getattr(trainer, "accumulate_grad_batches", 1)
    if isinstance(interval, int) and accumulate > 1 and interval % accumulate:
        rank_zero_warn(
            f"trainer.val_check_interval ({interval} micro-batches) is not a multiple of accumulate_grad_batches "
            f"({accumulate}): validation, and a checkpoint saved after it, fall inside an optimizer step, and a "
            f"run resumed from such a checkpoint loses that step's first gradients; use a multiple of {accumulate}."
        )


def _align_batch_progress(trainer: pl.Trainer) -> None:
    """After resuming on another number of processes, count this epoch's micro-batches as the new shape does.

    Lightning restored its in-epoch batch counters from the checkpoint (the old number of micro-batches per rank);
    accumulation boundaries and the end of the epoch are decided from them, so they must match where the data
    loader now resumes (`ResumableDataLoader.load_state_dict`).
    """
    restored = getattr(trainer.train_dataloader, "restored_from", None)
    if not restored:
        return
    old, new = restored
    progress = trainer.fit_loop.epoch_loop.batch_progress
    for counter in (progress.current, progress.total):
        for name in ("ready", "started", "processed", "completed"):
            setattr(counter, name, getattr(counter, name) - old + new)
    trainer.train_dataloader.restored_from = None
