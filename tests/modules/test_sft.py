import lightning.pytorch as pl
import pytest
import torch

from lightft import SFTDataModule, SFTModule
from lightft.callbacks import VerifiedCheckpoint
from lightft.data.sources import DatasetSpec
from lightft.errors import LightFTError
from lightft.optim import OptimizerConfig, SchedulerConfig
from lightft.peft import FullFineTune, LoRA
from tests.conftest import QUICKSTART
from tests.conftest import cpu_trainer as trainer


def datamodule(spec, batch_size=4, packing=False, n=32, **kwargs):
    return SFTDataModule(
        train=DatasetSpec(str(QUICKSTART / "train.jsonl"), max_examples=n),
        tokenizer=spec,
        max_length=128,
        batch_size=batch_size,
        packing=packing,
        **kwargs,
    )


class GradCapture(pl.Callback):
    def __init__(self):
        self.grads = []

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.grads.append({n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None})


def module(spec, peft=None, lr=1e-3):
    return SFTModule(
        spec,
        peft=peft or FullFineTune(),
        optimizer=OptimizerConfig(lr=lr),
        scheduler=SchedulerConfig(name="constant"),
        gradient_checkpointing=False,
    )


@pytest.mark.parametrize("packing", [False, True])
def test_accumulating_4x1_equals_one_batch_of_4(tmp_path, tiny_spec, packing):
    captured = {}
    for batch_size, accumulate in [(4, 1), (1, 4), (2, 2)]:
        capture = GradCapture()
        pl.seed_everything(0)
        trainer(tmp_path, max_steps=1, accumulate_grad_batches=accumulate, callbacks=[capture]).fit(
            module(tiny_spec), datamodule(tiny_spec, batch_size, packing=packing)
        )
        captured[(batch_size, accumulate)] = capture.grads[0]
    reference = captured[(4, 1)]
    assert len(reference) > 10
    for key in [(1, 4), (2, 2)]:
        for name, grad in reference.items():
            torch.testing.assert_close(captured[key][name], grad, rtol=1e-5, atol=1e-5, msg=f"{key} {name}")


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path, tiny_spec):
    grads = []
    for checkpointing in (False, True):
        capture = GradCapture()
        pl.seed_everything(0)  # same LoRA initialisation
        sft = module(tiny_spec, peft=LoRA(r=4, dropout=0.0))
        sft.gradient_checkpointing = checkpointing
        trainer(tmp_path, max_steps=1, callbacks=[capture]).fit(sft, datamodule(tiny_spec))
        grads.append(capture.grads[0])
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-6)


def test_checkpoint_holds_only_trainable_weights_and_resumes(tmp_path, tiny_spec):
    ckpt = VerifiedCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=3)
    sft = module(tiny_spec, peft=LoRA(r=4, dropout=0.0))
    trainer(tmp_path, max_steps=3, callbacks=[ckpt], enable_checkpointing=True).fit(sft, datamodule(tiny_spec))
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert saved["state_dict"] and all("lora_" in k for k in saved["state_dict"])
    assert set(saved["state_dict"]) == sft.trainable_keys()
    assert saved["global_step"] == 3 and saved["optimizer_states"][0]["state"]
    assert saved["hyper_parameters"]["_class_path"] == "lightft.modules.sft.SFTModule"

    resumed = module(tiny_spec, peft=LoRA(r=4, dropout=0.0))
    run = trainer(tmp_path, max_steps=5)
    run.fit(resumed, datamodule(tiny_spec), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert run.global_step == 5
    # the resumed optimizer continued from the saved state (Adam's step count), it did not start over
    state = next(iter(run.optimizers[0].state.values()))
    assert int(state["step"]) == 5


def test_checkpoint_from_another_strategy_is_refused(tmp_path, tiny_spec):
    ckpt = VerifiedCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, max_steps=1, callbacks=[ckpt], enable_checkpointing=True).fit(
        module(tiny_spec, peft=LoRA(r=4, target_modules=["q_proj"])), datamodule(tiny_spec)
    )
    with pytest.raises(LightFTError, match="lacks .* trainable weights"):
        trainer(tmp_path, max_steps=2).fit(
            module(tiny_spec, peft=LoRA(r=4)), datamodule(tiny_spec), ckpt_path=tmp_path / "ckpt" / "last.ckpt"
        )


def test_validation_loss_is_token_weighted_over_the_whole_set(tmp_path, tiny_spec):
    data = datamodule(tiny_spec, batch_size=3, val=DatasetSpec(str(QUICKSTART / "val.jsonl"), max_examples=10))
    sft = module(tiny_spec)
    results = trainer(tmp_path).validate(sft, data)
    data.setup("validate")
    loader = data.val_dataloader()
    total = count = 0.0
    with torch.no_grad():
        for batch in loader:
            from lightft.losses import token_cross_entropy

            s, n = token_cross_entropy(sft(batch), batch.labels)
            total, count = total + s.item(), count + n.item()
    assert results[0]["val/loss"] == pytest.approx(total / count, rel=1e-5)


class BatchLog(pl.Callback):
    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, module, batch, idx):
        self.seen.append(batch.input_ids[:, :12].tolist())


def test_mid_epoch_resume_replays_the_rest_of_the_epoch(tmp_path, tiny_spec):
    """3 steps, checkpoint, resume to 10 steps (across an epoch boundary) == 10 uninterrupted steps."""
    kwargs = dict(batch_size=2, n=16)  # 8 micro-batches per epoch, 2 per step with accumulation
    pl.seed_everything(0)
    straight, log = module(tiny_spec, peft=LoRA(r=4, dropout=0.0)), BatchLog()
    trainer(tmp_path, max_steps=10, accumulate_grad_batches=2, callbacks=[log]).fit(
        straight, datamodule(tiny_spec, **kwargs)
    )

    pl.seed_everything(0)
    first, first_log = module(tiny_spec, peft=LoRA(r=4, dropout=0.0)), BatchLog()
    ckpt = VerifiedCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(
        tmp_path, max_steps=3, accumulate_grad_batches=2, callbacks=[ckpt, first_log], enable_checkpointing=True
    ).fit(first, datamodule(tiny_spec, **kwargs))
    resumed, resumed_log = module(tiny_spec, peft=LoRA(r=4, dropout=0.0)), BatchLog()
    trainer(tmp_path, max_steps=10, accumulate_grad_batches=2, callbacks=[resumed_log]).fit(
        resumed, datamodule(tiny_spec, **kwargs), ckpt_path=tmp_path / "ckpt" / "last.ckpt"
    )
    assert first_log.seen + resumed_log.seen == log.seen
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters(), strict=True):
        if a.requires_grad:
            torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)


def test_lightning_load_from_checkpoint_rebuilds_the_trained_module(tmp_path, tiny_spec):
    ckpt = VerifiedCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    sft = module(tiny_spec, peft=LoRA(r=4, dropout=0.0), lr=1e-2)
    trainer(tmp_path, max_steps=2, callbacks=[ckpt], enable_checkpointing=True).fit(sft, datamodule(tiny_spec))
    loaded = SFTModule.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert isinstance(loaded.peft, LoRA) and loaded.peft.r == 4
    for name, param in sft.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(dict(loaded.named_parameters())[name], param)


def test_val_fraction_holds_out_a_disjoint_seeded_split(tiny_spec):
    data = datamodule(tiny_spec, n=40, val_fraction=0.25)
    data.setup("fit")
    train, val = data.datasets["train"], data.datasets["val"]
    assert (len(train), len(val)) == (30, 10)
    as_tuples = lambda ds: {tuple(ds[i]["input_ids"]) for i in range(len(ds))}  # noqa: E731
    assert not as_tuples(train) & as_tuples(val)
    again = datamodule(tiny_spec, n=40, val_fraction=0.25)
    again.setup("fit")
    assert as_tuples(again.datasets["val"]) == as_tuples(val)


def test_validation_inside_an_optimizer_step_is_warned_about(tmp_path, tiny_spec):
    """A checkpoint written after such a validation would resume without the step's first gradients."""
    data = datamodule(tiny_spec, batch_size=2, val=DatasetSpec(str(QUICKSTART / "val.jsonl"), max_examples=4))
    with pytest.warns(UserWarning, match=r"val_check_interval \(3 micro-batches\) is not a multiple of accumulate"):
        trainer(tmp_path, max_steps=1, accumulate_grad_batches=2, val_check_interval=3, limit_val_batches=1).fit(
            module(tiny_spec, peft=LoRA(r=4, dropout=0.0)), data
        )
