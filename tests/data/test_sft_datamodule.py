"""SFTDataModule's batch_size_unit: packed runs that take the unpacked run's optimizer steps, token budgets, and
the line logged at fit start that says what a step holds."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from lightft import SFTDataModule, SFTModule
from lightft.callbacks import VerifiedCheckpoint
from lightft.data.sources import DatasetSpec
from lightft.errors import LightFTError
from lightft.optim import OptimizerConfig, SchedulerConfig
from lightft.peft import FullFineTune, LoRA
from tests.conftest import QUICKSTART, cpu_trainer


def datamodule(spec, n=24, max_length=512, **kwargs):
    return SFTDataModule(
        train=DatasetSpec(str(QUICKSTART / "train.jsonl"), max_examples=n), tokenizer=spec, max_length=max_length,
        **kwargs,
    )  # fmt: skip


class StepLog(pl.Callback):
    """Per optimizer step: the examples trained on, the normaliser the batches carry, the trained positions."""

    def __init__(self, accumulate):
        self.accumulate, self.micro, self.first_grads = accumulate, [], None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        examples = sorted(i for row in batch.rows for i in row)
        self.micro.append((examples, float(batch.normaliser), int((batch.labels[:, 1:] != -100).sum())))

    def on_before_optimizer_step(self, trainer, module, optimizer):
        if self.first_grads is None:
            self.first_grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}

    def steps(self):
        chunks = [self.micro[i : i + self.accumulate] for i in range(0, len(self.micro), self.accumulate)]
        return [(sorted(i for m in c for i in m[0]), {m[1] for m in c}, sum(m[2] for m in c)) for c in chunks]


def sft(spec, peft=None):
    return SFTModule(spec, peft=peft or FullFineTune(), optimizer=OptimizerConfig(lr=1e-3),
                     scheduler=SchedulerConfig(name="constant"), gradient_checkpointing=False)  # fmt: skip


def fit_epoch(tmp_path, spec, monkeypatch, **data):
    logged = []
    monkeypatch.setattr("lightft.data.base.rank_zero_info", logged.append)
    log = StepLog(accumulate=2)
    pl.seed_everything(0)
    module = sft(spec)
    trainer = cpu_trainer(tmp_path, max_epochs=1, accumulate_grad_batches=2, callbacks=[log], num_sanity_val_steps=0)
    trainer.fit(module, datamodule(spec, batch_size=2, **data))
    return trainer.global_step, log, [line for line in logged if line.startswith("batches:")]


def test_packing_by_examples_trains_the_unpacked_steps(tmp_path, tiny_spec, monkeypatch):
    steps, unpacked, line = fit_epoch(tmp_path, tiny_spec, monkeypatch)
    assert steps == 6 and line == [
        "batches: 2 examples per micro-batch x 2 accumulation x 1 rank = 4 examples "
        f"(~{round(sum(s[2] for s in unpacked.steps()) / 6)} trained tokens) per optimizer step, 6 optimizer steps per "
        "epoch"
    ]
    packed_steps, packed, packed_line = fit_epoch(tmp_path, tiny_spec, monkeypatch, packing=True,
                                                  batch_size_unit="examples")  # fmt: skip
    assert packed_steps == steps
    assert [s[0] for s in packed.steps()] == [s[0] for s in unpacked.steps()]  # the same examples in every step
    for _, normaliser, trained in packed.steps():
        assert normaliser == {trained}  # the step's normaliser: exactly its trained tokens
    assert any(len(examples) > 1 for examples, _, _ in packed.micro)  # rows really hold several examples
    for name, grad in unpacked.first_grads.items():
        torch.testing.assert_close(packed.first_grads[name], grad, rtol=1e-5, atol=1e-5, msg=name)
    assert packed_line[0].startswith("batches: 2 examples (1 packed row of up to 512 tokens) per micro-batch x 2 ")
    assert packed_line[0].endswith("6 optimizer steps per epoch (the unpacked run's steps)")


def test_packing_by_rows_says_it_takes_fewer_steps(tmp_path, tiny_spec, monkeypatch):
    steps, _, line = fit_epoch(tmp_path, tiny_spec, monkeypatch, packing=True)
    assert steps < 6
    assert line[0].startswith("batches: 2 packed rows of up to 512 tokens per micro-batch x 2 accumulation x 1 rank")
    assert line[0].endswith(
        f"{steps} optimizer steps per epoch (unpacked with batch_size 2: 6 steps); set batch_size_unit: examples to "
        "take the unpacked run's steps"
    )


@pytest.mark.parametrize("packing", [False, True])
def test_a_token_budget_bounds_every_micro_batch(tiny_spec, packing):
    data = datamodule(tiny_spec, n=40, max_length=256, batch_size=512, batch_size_unit="tokens", packing=packing)
    data.setup("fit")
    batches = list(data.train_dataloader())
    assert all(batch.input_ids.numel() <= 512 for batch in batches)  # padding included
    assert sorted(i for batch in batches for row in batch.rows for i in row) == list(range(40))
    assert len(batches) < 20  # more than 2 examples per micro-batch on average
    assert all(batch.packed is packing for batch in batches)


def test_settings_after_the_splits_are_keyword_only():
    with pytest.raises(TypeError, match="positional"):
        SFTDataModule("train.jsonl", None, 0.1)


def test_meaningless_units_are_refused_with_the_key(tiny_spec):
    with pytest.raises(LightFTError, match=r"^data\.init_args\.batch_size_unit: tokens .* below max_length 256"):
        datamodule(tiny_spec, max_length=256, batch_size=4, batch_size_unit="tokens")
    with pytest.raises(LightFTError, match=r"^data\.init_args\.batch_size_unit: 'packs' is not one of"):
        datamodule(tiny_spec, batch_size_unit="packs")


def test_batch_report_needs_no_trainer(tiny_spec):
    data = datamodule(tiny_spec, n=24, batch_size=2, packing=True)
    report = data.batch_report(world_size=2, accumulate=3)
    assert "x 3 accumulation x 2 ranks =" in report.line and "(unpacked with batch_size 2: 2 steps)" in report.line
    assert report.warning.startswith("data.init_args.batch_size_unit: rows with packing: batch_size 2 counts packed")


def test_packing_by_examples_resumes_mid_epoch(tmp_path, tiny_spec):
    """3 steps, checkpoint, resume to 9 steps (across an epoch boundary: 6 per epoch) == 9 uninterrupted steps."""
    data = dict(batch_size=2, packing=True, batch_size_unit="examples")
    runs = {}
    for name, steps, ckpt in [
        ("straight", 9, None),
        ("first", 3, None),
        ("resumed", 9, tmp_path / "ckpt" / "last.ckpt"),
    ]:
        pl.seed_everything(0)
        module, log = sft(tiny_spec, peft=LoRA(r=4, dropout=0.0)), StepLog(accumulate=2)
        callbacks = [log] + ([VerifiedCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)] if name == "first" else [])
        trainer = cpu_trainer(tmp_path, max_steps=steps, accumulate_grad_batches=2, callbacks=callbacks,
                              enable_checkpointing=name == "first")  # fmt: skip
        trainer.fit(module, datamodule(tiny_spec, **data), ckpt_path=ckpt)
        runs[name] = module, log.micro
    assert runs["first"][1] + runs["resumed"][1] == runs["straight"][1]
    straight, resumed = runs["straight"][0], runs["resumed"][0]
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters(), strict=True):
        if a.requires_grad:
            torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)
