"""Non-finite guard: a NaN/inf loss or gradient skips the optimizer step instead of poisoning the weights.

After the backward passes of a step and before the optimizer runs (`on_before_optimizer_step`), every rank checks
its losses of the step and its local gradients; the ranks agree (one all-reduce); on a bad step every gradient is
dropped (`grad = None`: AdamW and the bitsandbytes optimizers leave such a parameter, its moments and its step count
untouched), `train/skipped_steps` is logged, and the step's micro-batches (`Batch.plain()`: dataset rows or indices,
token ids, labels, ...) are written to `<run dir>/nonfinite/step-<N>-rank<R>.json`. After `max_consecutive` bad steps
in a row the run stops with an error naming the dump. The learning-rate schedule still advances by the skipped step.
With fp16 and a GradScaler, overflowing gradients are left to the scaler (it skips the step and lowers the scale);
only non-finite losses count.

DeepSpeed keeps its own gradient buffers, so a step cannot be skipped from outside: there the first bad step
stops the run (after the dump).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn

from lightft.data.batches import Batch
from lightft.errors import LightFTError


class NonFiniteGuard(pl.Callback):
    """Skip optimizer steps whose loss or gradients are not finite; stop after `max_consecutive` in a row.

    Args:
        max_consecutive: Bad steps in a row that stop the run (>= 1).
        dump_examples: Write each bad step's examples to `<run dir>/nonfinite/`.
    """

    def __init__(self, max_consecutive: int = 3, dump_examples: bool = True) -> None:
        if max_consecutive < 1:
            raise LightFTError(f"nonfinite.max_consecutive: must be >= 1, got {max_consecutive}.")
        self.max_consecutive, self.dump_examples = max_consecutive, dump_examples
        self.consecutive = self.skipped = 0
        self._bad_loss = False
        self._batches: list[Batch] = []
        self.dumps: list[Path] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        """Remember this micro-batch (for the dump; its tensors are read only if the step turns out bad)."""
        if self.dump_examples and isinstance(batch, Batch):
            self._batches.append(batch)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Manual optimization: the batch's optimizer steps are done."""
        if not pl_module.automatic_optimization:
            self._batches = []

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        """Note a non-finite micro-batch loss."""
        if not bool(torch.isfinite(loss.detach()).all()):
            self._bad_loss = True

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """Drop the step's gradients if any rank saw a non-finite loss or gradient."""
        # fp16 with a GradScaler: overflowing gradients are the scaler's business (it skips the step and lowers the
        # scale; dropping them here would hide the overflow from it), only a non-finite loss counts
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        bad = self._bad_loss or (scaler is None and not _finite_grads(optimizer))
        bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        batches = list(self._batches)
        self._bad_loss = False
        if pl_module.automatic_optimization:  # manual optimization (PPO) steps several times per batch
            self._batches = []
        if not bad:
            self.consecutive = 0
            return
        self.consecutive += 1
        self.skipped += 1
        if scaler is None:
            for group in optimizer.param_groups:
                for param in group["params"]:
                    param.grad = None
        dump = self._dump(trainer, batches)
        pl_module.log("train/skipped_steps", float(self.skipped), on_step=True, on_epoch=False, rank_zero_only=True)
        where = f"; examples in {dump.parent}" if dump else ""
        deepspeed = type(trainer.strategy).__name__.startswith("DeepSpeed")
        if self.consecutive >= self.max_consecutive or deepspeed:
            what = f"{self.consecutive} non-finite steps in a row"
            if deepspeed:
                what = "a non-finite step (DeepSpeed cannot skip it)"
            raise LightFTError(
                f"nonfinite.max_consecutive: stopped at step {trainer.global_step} after {what}{where}; lower "
                "model.init_args.optimizer.lr, set trainer.gradient_clip_val, use bf16 rather than fp16, or fix the "
                "data those examples come from."
            )
        rank_zero_warn(f"step {trainer.global_step}: non-finite loss or gradient, update skipped{where}")

    def _dump(self, trainer: pl.Trainer, batches: list[Batch]) -> Path | None:
        if not self.dump_examples:
            return None
        name = f"step-{trainer.global_step}-rank{trainer.global_rank}.json"
        path = Path(trainer.default_root_dir) / "nonfinite" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        plain = [batch.plain() for batch in batches]
        record = {"step": trainer.global_step, "rank": trainer.global_rank, "micro_batches": plain}
        path.write_text(json.dumps(record))
        self.dumps.append(path)
        return path

    def state_dict(self) -> dict[str, int]:
        """Counters survive a resume."""
        return {"consecutive": self.consecutive, "skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Restore the counters."""
        self.consecutive, self.skipped = state_dict["consecutive"], state_dict["skipped"]


def _finite_grads(optimizer: torch.optim.Optimizer) -> bool:
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    grads = [g.to_local() if hasattr(g, "to_local") else g for g in grads]  # FSDP2: this rank's shard
    return not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())  # one device sync
