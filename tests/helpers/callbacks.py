"""Callbacks that tests name by class_path on the command line (they run inside `lightft fit` processes)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch


class GradientDump(pl.Callback):
    """Saves the (already all-reduced) gradients of the first optimizer step to `path` on rank 0."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_before_optimizer_step(self, trainer: pl.Trainer, module: pl.LightningModule, optimizer) -> None:
        if trainer.global_step == 0 and trainer.is_global_zero:
            grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
            torch.save(grads, self.path)
