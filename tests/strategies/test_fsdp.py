"""The FSDP (v1) preset: its Lightning configuration and its wrap policy (a unit per decoder layer and per trainable
leaf). Training under it needs GPUs: tests/test_gpu_strategies.py."""

from lightning.pytorch.strategies import FSDPStrategy

from lightft import peft
from lightft.strategies import FSDP, decoder_layer_classes, fsdp_wrap_policy, strategy_kind


def test_fsdp_wraps_decoder_layers_and_trainable_leaves(tiny_model):
    model = peft.LoRA(r=2, alpha=4).apply(tiny_model)
    classes = tuple(decoder_layer_classes(model))
    wrapped = [n for n, m in model.named_modules() if fsdp_wrap_policy(m, False, 0, layer_classes=classes)]
    layers = [n for n in wrapped if n.endswith(("layers.0", "layers.1"))]
    lora = [n for n in wrapped if ".lora_A." in n or ".lora_B." in n]
    assert len(layers) == 2 and lora and set(wrapped) == set(layers) | set(lora)
    assert fsdp_wrap_policy(model, True, 0, layer_classes=classes)  # always recurse


def test_fsdp_preset():
    strategy = FSDP(sharding="HYBRID_SHARD", cpu_offload=True, state_dict_type="sharded")
    assert isinstance(strategy, FSDPStrategy) and strategy_kind(strategy) == "fsdp"
    assert strategy.sharding_strategy.name == "HYBRID_SHARD" and strategy.cpu_offload.offload_params
    assert strategy._state_dict_type == "sharded" and strategy.kwargs["use_orig_params"]
