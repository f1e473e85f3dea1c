"""The presets' shared helpers: decoder layers found in a model, the kind and ZeRO stage of a strategy object, the
trainable-keys check of a checkpoint, and the package re-exporting every public name of its modules."""

import importlib
import inspect

import pytest
from lightning.pytorch.strategies import SingleDeviceStrategy

import lightft.strategies
from lightft import peft
from lightft.errors import LightFTError
from lightft.strategies import (
    DDP,
    FSDP,
    FSDP2,
    DeepSpeed,
    check_trainable_keys,
    decoder_layer_classes,
    decoder_layers,
    is_trainable_leaf,
    strategy_kind,
    zero_stage,
)

MODULES = ("common", "ddp", "fsdp", "fsdp2", "deepspeed")


def test_decoder_layers_of_the_tiny_llama(tiny_model):
    assert {c.__name__ for c in decoder_layer_classes(tiny_model)} == {"LlamaDecoderLayer"}
    assert len(decoder_layers(tiny_model)) == 2


def test_trainable_leaves_are_the_lora_layers(tiny_model):
    model = peft.LoRA(r=2, alpha=4, target_modules=["q_proj"]).apply(tiny_model)
    leaves = {n for n, m in model.named_modules() if is_trainable_leaf(m)}
    assert leaves and all(n.endswith(("lora_A.default", "lora_B.default")) for n in leaves)
    assert len(leaves) == 2 * 2  # A and B of q_proj in each of the 2 layers


def test_strategy_kind_and_zero_stage():
    kinds = [strategy_kind(s) for s in (DDP(), FSDP(), FSDP2(), DeepSpeed(stage=1), SingleDeviceStrategy("cpu"))]
    assert kinds == ["ddp", "fsdp", "fsdp2", "deepspeed", "single"]
    assert zero_stage(DeepSpeed(stage=3)) == 3


def test_a_checkpoint_without_the_trained_weights_is_refused(tiny_model):
    model = peft.LoRA(r=2, target_modules=["q_proj"]).apply(tiny_model)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    check_trainable_keys(model, trained + ["extra.weight"], "ok.ckpt")  # extra keys are not this check's concern
    dropped = "base_model.model.model.layers.1.self_attn.q_proj.lora_B.default.weight"
    assert dropped in trained
    with pytest.raises(LightFTError, match=r"old.ckpt lacks 1 trainable weights .*layers.1.self_attn.q_proj.lora_B"):
        check_trainable_keys(model, [n for n in trained if n != dropped], "old.ckpt")


@pytest.mark.parametrize("name", MODULES)
def test_the_package_exports_every_public_name_of_its_modules(name):
    module = importlib.import_module(f"lightft.strategies.{name}")
    defined = {n: obj for n, obj in vars(module).items() if inspect.isfunction(obj) or inspect.isclass(obj)}
    public = {n for n, obj in defined.items() if not n.startswith("_") and obj.__module__ == module.__name__}
    assert public and public <= set(lightft.strategies.__all__)
    assert all(getattr(lightft.strategies, n) is getattr(module, n) for n in public)
