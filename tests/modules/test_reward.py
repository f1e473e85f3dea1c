import torch

from lightft import RewardModelModule
from lightft.optim import OptimizerConfig, SchedulerConfig
from lightft.peft import BottleneckAdapter, LoRA
from tests.helpers.preference import pair_data, trainer


def reward_module(spec, peft=None):
    return RewardModelModule(
        spec,
        peft=peft or LoRA(r=8, alpha=16, dropout=0.0),
        optimizer=OptimizerConfig(lr=3e-3),
        scheduler=SchedulerConfig(name="constant"),
        gradient_checkpointing=False,
    )


def test_reward_model_accuracy_rises_well_above_chance(tmp_path, tiny_spec):
    module, data = reward_module(tiny_spec), pair_data(tmp_path, tiny_spec)
    before = trainer(tmp_path).validate(module, datamodule=data, verbose=False)[0]
    trainer(tmp_path, max_steps=24, limit_val_batches=0).fit(module, datamodule=data)
    after = trainer(tmp_path).validate(module, datamodule=data, verbose=False)[0]
    assert before["val/accuracy"] < 0.8
    assert after["val/accuracy"] >= 0.95
    assert after["val/margin"] > before["val/margin"] + 0.5
    assert after["val/loss"] < before["val/loss"]


def test_head_trains_with_every_strategy_and_is_checkpointed(tmp_path, tiny_spec):
    module, data = reward_module(tiny_spec, BottleneckAdapter(size=8)), pair_data(tmp_path, tiny_spec, n_train=16)
    fit = trainer(tmp_path, max_steps=2, limit_val_batches=0)
    fit.fit(module, datamodule=data)
    head = [n for n, p in module.named_parameters() if p.requires_grad and "score" in n]
    assert head == ["model.score.weight"]
    path = tmp_path / "rm.ckpt"
    fit.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert "model.score.weight" in saved and any(".adapter." in k for k in saved)


def test_a_fully_fine_tuned_reward_model_exports_and_reloads_as_a_scoring_model(tmp_path, tiny_spec):
    from lightft.callbacks import VerifiedCheckpoint
    from lightft.commands.export import export, load_exported, load_trained
    from lightft.peft import FullFineTune

    module, data = reward_module(tiny_spec, FullFineTune()), pair_data(tmp_path, tiny_spec, n_train=16)
    ckpt = VerifiedCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, max_steps=2, limit_val_batches=0, callbacks=[ckpt], enable_checkpointing=True).fit(
        module, datamodule=data
    )
    export(str(tmp_path / "ckpt" / "last.ckpt"), str(tmp_path / "rm"))  # no --merge: the strategy's own format
    model, _ = load_exported(tmp_path / "rm")
    assert type(model).__name__.endswith("ForSequenceClassification")
    ids = torch.tensor([[1, 5, 9, 33, 70]])
    with torch.no_grad():
        expected = load_trained(tmp_path / "ckpt" / "last.ckpt").model(input_ids=ids).logits
        torch.testing.assert_close(model(input_ids=ids).logits, expected)
