"""Callbacks that tests name by class_path on the command line (they run inside `lightft fit` processes)."""

from __future__ import annotations

import time
from contextlib import nullcontext

import lightning.pytorch as pl
import torch


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded (DTensor) tensor gathered whole on every rank; a plain tensor as it is."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


class GradientDump(pl.Callback):
    """Saves the (already all-reduced) gradients of the first optimizer step to `path` on rank 0."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_before_optimizer_step(self, trainer: pl.Trainer, module: pl.LightningModule, optimizer) -> None:
        if trainer.global_step == 0:
            grads = {n: _full(p.grad).detach().clone() for n, p in module.named_parameters() if p.grad is not None}
            if trainer.is_global_zero:
                torch.save(grads, self.path)


class LossTrace(pl.Callback):
    """Saves to `path` (rank 0) each step's training loss as the whole step sees it: the mean over ranks of what
    `training_step` returned (lightft scales each rank's loss so that this mean is the global batch's loss)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        loss = trainer.strategy.reduce(outputs["loss"].detach().clone(), reduce_op="mean")
        self.losses.append(float(loss))

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            torch.save(self.losses, self.path)


class ReplicaCheck(pl.Callback):
    """At the end of fit, writes to `path` (rank 0) the largest difference of any trainable weight between ranks.

    Data-parallel replicas must stay identical; sharded parameters are gathered first.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        import torch.distributed as dist

        params = [param for _, param in sorted(module.named_parameters()) if param.requires_grad]
        gathered_zero3 = nullcontext()
        if any(hasattr(param, "ds_id") for param in params):  # DeepSpeed ZeRO-3 partitions: gather them whole
            import deepspeed

            gathered_zero3 = deepspeed.zero.GatheredParameters(params)
        with gathered_zero3:
            flat = torch.cat([_full(param).detach().float().flatten() for param in params])
        gathered = [torch.zeros_like(flat) for _ in range(trainer.world_size)]
        dist.all_gather(gathered, flat)
        if trainer.is_global_zero:
            spread = max(float((g - gathered[0]).abs().max()) for g in gathered)
            torch.save({"spread": spread, "numel": flat.numel()}, self.path)


class ShardReport(pl.Callback):
    """At the start of fit, writes to `path` (rank 0) per parameter class: how many are sharded (DTensor), and the
    elements held locally vs in full."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        report: dict[str, dict[str, int]] = {}
        for layer in module.modules():
            for name, param in layer.named_parameters(recurse=False):
                kind = "Params4bit" if type(layer).__name__ == "Linear4bit" and name == "weight" else "other"
                entry = report.setdefault(kind, {"sharded": 0, "local": 0, "full": 0})
                entry["sharded"] += int(hasattr(param, "to_local"))
                entry["local"] += (param.to_local() if hasattr(param, "to_local") else param).numel()
                entry["full"] += param.numel()
        if trainer.is_global_zero:
            torch.save(report, self.path)


class Pace(pl.Callback):
    """Sleeps `seconds` after each training batch (so a test can signal a run mid-training) and appends to `path`
    (rank 0) the step each run starts from (`start N`) and each global step reached, for the test to watch."""

    def __init__(self, seconds: float, path: str) -> None:
        self.seconds = seconds
        self.path = path

    def _write(self, trainer: pl.Trainer, line: str) -> None:
        if trainer.is_global_zero:
            with open(self.path, "a") as f:
                f.write(line + "\n")

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._write(trainer, f"start {trainer.global_step}")

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        self._write(trainer, str(trainer.global_step))
        time.sleep(self.seconds)


class KillAt(pl.Callback):
    """SIGKILLs the run (`group`: its whole process group, every rank) when micro-batch number `batch` (counted
    from 1 over the whole run, resumes included: from the step the run starts at) has run; with `during_save`,
    instead in the middle of writing the first checkpoint after that: half the file written, then killed."""

    def __init__(self, batch: int, during_save: bool = False, group: bool = False) -> None:
        self.batch, self.during_save, self.group = batch, during_save, group
        self.seen = 0
        self.armed = False

    def _kill(self) -> None:
        import os
        import signal

        if self.group:
            os.killpg(os.getpgid(0), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.seen = trainer.fit_loop.epoch_loop.batch_progress.total.ready
        if self.during_save:
            io = trainer.strategy.checkpoint_io
            save = io.save_checkpoint

            def half_then_kill(checkpoint, path, storage_options=None):
                if not self.armed:
                    return save(checkpoint, path, storage_options)
                import io as _io

                buffer = _io.BytesIO()
                torch.save(checkpoint, buffer)
                with open(path, "wb") as f:
                    f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                    f.flush()
                self._kill()

            io.save_checkpoint = half_then_kill

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        self.seen += 1
        if self.seen >= self.batch:
            if self.during_save:
                self.armed = True
            else:
                self._kill()
