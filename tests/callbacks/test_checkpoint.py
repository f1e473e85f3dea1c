"""VerifiedCheckpoint: every checkpoint is read back and must hold exactly the module's trainable tensors before it
replaces the previous one; a bad one fails the save and leaves the previous checkpoint whole; a save that a validation
follows waits for it. BestCheckpoint: best.ckpt is the checkpoint of the best validation, recorded in last.ckpt.
Killed saves and exact resumes through `lightft fit`: tests/test_resume.py, tests/callbacks/test_early_stopping.py."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from lightft.callbacks import BestCheckpoint, VerifiedCheckpoint, verify_checkpoint
from lightft.errors import LightFTError
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


class Scripted(Adapted):
    """Validates on two rows; logs `val/loss` from `losses`, one value per validation (the scores a run could have),
    and counts its validations into its checkpoints."""

    def __init__(self, losses: list[float], key: str = "val/loss") -> None:
        super().__init__()
        self.losses, self.key, self.validations = losses, key, 0

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log(self.key, self.losses[self.validations])

    def on_validation_epoch_end(self) -> None:
        self.validations += 1 if not self.trainer.sanity_checking else 0

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["validations"] = self.validations


def fit_validating(tmp_path, module: Adapted, steps: int, *callbacks: pl.Callback) -> pl.Trainer:
    """Validation after every 2 steps (no sanity check: the logged values are the script's)."""
    trainer = cpu_trainer(tmp_path, max_steps=steps, enable_checkpointing=True, callbacks=list(callbacks),
                          val_check_interval=2, num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(module, DataLoader(torch.randn(16, 4), batch_size=None), DataLoader(torch.randn(1, 4), batch_size=None))
    return trainer


def test_best_ckpt_is_the_checkpoint_of_the_best_validation_and_last_records_it(tmp_path):
    best, last = BestCheckpoint(monitor="val/loss"), VerifiedCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    fit_validating(tmp_path, Scripted([3.0, 1.0, 2.0, 0.5, 4.0, 0.7]), 12, best, last)
    assert best.dirpath == last.dirpath  # beside last.ckpt
    saved = torch.load(tmp_path / "ckpt" / "best.ckpt", weights_only=True)
    assert saved["global_step"] == 8 and saved["validations"] == 4  # the fourth validation's 0.5
    recorded = next(v for k, v in torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["callbacks"].items()
                    if k.startswith("BestCheckpoint"))  # fmt: skip
    assert recorded["best_step"] == 8 and float(recorded["best_model_score"]) == 0.5
    assert not [p.name for p in (tmp_path / "ckpt").iterdir() if p.name.startswith("best") and p.name != "best.ckpt"]


@pytest.mark.parametrize(("mode", "step"), [("min", 2), ("max", 4)])
def test_best_ckpt_follows_the_mode(tmp_path, mode, step):
    fit_validating(tmp_path, Scripted([0.1, 0.9, 0.5], "val/accuracy"), 6, BestCheckpoint("val/accuracy", mode=mode))
    assert torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=True)["global_step"] == step


def test_auto_watches_val_loss_when_logged_and_writes_nothing_otherwise(tmp_path):
    fit_validating(tmp_path / "a", Scripted([2.0, 1.0]), 4, BestCheckpoint())
    assert torch.load(tmp_path / "a" / "checkpoints" / "best.ckpt", weights_only=True)["global_step"] == 4
    best = BestCheckpoint()  # a module that logs no val/loss (and declares nothing): no best.ckpt, no error
    fit_validating(tmp_path / "b", Scripted([2.0, 1.0], "val/reward"), 4, best)
    assert best.monitor is None and not (tmp_path / "b" / "checkpoints").exists()


def test_a_named_metric_that_validation_does_not_log_is_one_line(tmp_path):
    with pytest.raises(LightFTError, match=r"--best.monitor: 'val/acc' was not logged .*; it logged val/loss"):
        fit_validating(tmp_path, Scripted([2.0, 1.0]), 4, BestCheckpoint("val/acc"))


def test_a_save_due_where_a_validation_follows_waits_for_it(tmp_path):
    """A checkpoint between a step and its validation would resume past that validation (Lightning skips it)."""
    checkpoint = VerifiedCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=2)
    fit_validating(tmp_path, Scripted([3.0, 2.0]), 4, checkpoint)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 4 and saved["validations"] == 2  # written after the step-4 validation
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["epoch=0-step=4.ckpt", "last.ckpt"]
