import pytest
import torch

from lightft import LightFTModule, SFTModule
from lightft.peft import LoRA
from tests.modules.test_sft import datamodule, module, trainer


def test_without_a_trainer_nothing_is_attached(tiny_spec):
    sft = module(tiny_spec)
    assert sft.attached_trainer() is None


def test_a_checkpoint_holds_the_trainable_weights_precision_and_random_states(tmp_path, tiny_spec):
    sft = module(tiny_spec, peft=LoRA(r=4, dropout=0.0))
    fit = trainer(tmp_path, max_steps=1)
    fit.fit(sft, datamodule(tiny_spec))
    assert sft.attached_trainer() is fit
    fit.save_checkpoint(tmp_path / "one.ckpt")
    checkpoint = torch.load(tmp_path / "one.ckpt", weights_only=True)
    assert set(checkpoint["state_dict"]) == sft.trainable_keys() and all("lora_" in k for k in checkpoint["state_dict"])
    assert checkpoint["lightft_precision"] == "32-true" and len(checkpoint["lightft_rng"]) == 1
    loaded = LightFTModule.load_from_checkpoint(tmp_path / "one.ckpt", weights_only=True)  # the checkpoint's class
    assert type(loaded) is SFTModule and loaded.peft.r == 4


def test_a_checkpoint_of_another_model_is_refused_by_name(tmp_path, tiny_spec):
    sft = module(tiny_spec, peft=LoRA(r=4, dropout=0.0))
    sft.configure_model()
    with pytest.raises(Exception, match="lora"):
        sft.on_load_checkpoint({"state_dict": {"model.unrelated.weight": torch.zeros(1)}})
