"""VerifiedCheckpoint: every checkpoint is read back and must hold exactly the module's trainable tensors before it
replaces the previous one; a bad one fails the save and leaves the previous checkpoint whole. Killed saves and exact
resumes through `lightft fit`: tests/test_resume.py."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from lightft.callbacks import VerifiedCheckpoint, verify_checkpoint
from tests.conftest import cpu_trainer


class Adapted(pl.LightningModule):
    """A frozen base layer and a trainable one; checkpoints hold the trainable weights only (as lightft's modules do).

    From optimizer step `drop_from` on, its checkpoints lose a tensor (what a broken save looks like).
    """

    def __init__(self, drop_from: int | None = None) -> None:
        super().__init__()
        self.base = torch.nn.Linear(4, 4).requires_grad_(False)
        self.adapter = torch.nn.Linear(4, 1)
        self.drop_from = drop_from

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.adapter(self.base(batch)).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.adapter.parameters(), lr=0.1)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        if self.drop_from is not None and self.global_step >= self.drop_from:
            trainable.discard("adapter.bias")
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}


def save(path, state: dict) -> None:
    torch.save({"state_dict": state}, path)


def test_verify_accepts_exactly_the_trainable_tensors_and_names_what_is_wrong(tmp_path):
    module, path = Adapted(), tmp_path / "c.ckpt"
    good = {"adapter.weight": torch.zeros(1, 4), "adapter.bias": torch.zeros(1)}
    save(path, good)
    verify_checkpoint(path, module)
    cases = [
        ({**good, "base.weight": torch.zeros(4, 4)}, r"inconsistent: extra \['base.weight'\], missing \[\]"),
        ({"adapter.weight": good["adapter.weight"]}, r"inconsistent: extra \[\], missing \['adapter.bias'\]"),
        ({**good, "adapter.weight": torch.zeros(4, 1)}, r"adapter.weight has shape \(4, 1\), expected"),
        ({**good, "adapter.bias": torch.zeros(0)}, r"adapter.bias has shape \(0,\)"),
    ]
    for state, message in cases:
        save(path, state)
        with pytest.raises(RuntimeError, match=message):
            verify_checkpoint(path, module)


def fit(tmp_path, module: Adapted, steps: int) -> VerifiedCheckpoint:
    checkpoint = VerifiedCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=2)
    trainer = cpu_trainer(tmp_path, max_steps=steps, enable_checkpointing=True, callbacks=[checkpoint])
    trainer.fit(module, DataLoader(torch.randn(8, 4), batch_size=None))
    return checkpoint


def test_checkpoints_hold_the_trainable_weights_and_replace_the_last_one(tmp_path):
    module = Adapted()
    checkpoint = fit(tmp_path, module, steps=4)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 4 and set(saved["state_dict"]) == {"adapter.weight", "adapter.bias"}
    torch.testing.assert_close(saved["state_dict"]["adapter.weight"], module.adapter.weight)
    assert checkpoint.last_model_path == str(tmp_path / "ckpt" / "last.ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["epoch=0-step=4.ckpt", "last.ckpt"]


def test_a_checkpoint_that_does_not_read_back_fails_and_keeps_the_previous_one(tmp_path):
    with pytest.raises(RuntimeError, match=r"missing \['adapter.bias'\]"):
        fit(tmp_path, Adapted(drop_from=4), steps=6)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 2 and set(saved["state_dict"]) == {"adapter.weight", "adapter.bias"}
