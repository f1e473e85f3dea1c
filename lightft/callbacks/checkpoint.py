"""ModelCheckpoint that writes atomically and reads every checkpoint back before it replaces the previous one.

A checkpoint is only useful if it resumes: each file is written under a hidden name, re-opened (`weights_only=True`,
memory-mapped) and must hold exactly the module's trainable tensors with their shapes, none empty; only then is it
renamed into place (`lightft.checkpoints.save_atomically`). A crash (even `kill -9`) during a save leaves the
previous `last.ckpt` whole.
"""

from __future__ import annotations

from pathlib import Path
from weakref import proxy

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightft.checkpoints import recover_interrupted, save_atomically


class VerifiedCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint (same arguments); every checkpoint is written atomically and read back first."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Also undo a directory swap that a crash interrupted (the previous checkpoint is put back)."""
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and self.dirpath:
            recover_interrupted(self.dirpath)

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        module = trainer.lightning_module
        save_atomically(trainer, filepath, self.save_weights_only, check=lambda path: verify_checkpoint(path, module))
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))


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
