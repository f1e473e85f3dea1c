"""ModelCheckpoint that reads every checkpoint back and checks its trainable weights.

A checkpoint is only useful if it resumes: each file written is re-opened (`weights_only=True`, memory-mapped) and
must hold exactly the module's trainable tensors with their shapes, none empty.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint


class VerifiedCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint (same arguments) plus a read-back check of every file it writes."""

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        if trainer.is_global_zero and Path(filepath).is_file():
            verify_checkpoint(filepath, trainer.lightning_module)


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
