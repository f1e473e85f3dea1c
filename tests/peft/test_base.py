"""The helpers every PEFT strategy shares: parameter counts (4-bit weights at their logical size, whatever dtype
bitsandbytes packs them into), declared capabilities, and the saved size of a state dict."""

import bitsandbytes as bnb
import pytest
import torch
from torch import nn

from lightft.models.loading import load_model
from lightft.peft import LoRA, PromptTuning, QLoRA, capability, count_parameters, state_dict_bytes


def linear4bit(storage: torch.dtype, out_features: int = 64, in_features: int = 64) -> nn.Module:
    """A real bitsandbytes NF4 layer, quantized (bitsandbytes quantizes a layer's weight when it moves to a device)."""
    layer = bnb.nn.Linear4bit(in_features, out_features, bias=False, quant_type="nf4", quant_storage=storage)
    layer = layer.to("cpu")
    assert layer.weight.bnb_quantized and layer.weight.dtype == storage
    return layer


@pytest.mark.parametrize(
    ("storage", "packed"), [(torch.uint8, 2048), (torch.bfloat16, 1024), (torch.float32, 512)]
)  # fmt: skip
def test_a_4bit_layer_counts_its_logical_parameters_in_any_storage_dtype(storage, packed):
    layer = linear4bit(storage)
    assert layer.weight.numel() == packed  # 4,096 values at 4 bits, packed into 1-, 2- or 4-byte elements
    assert count_parameters(layer) == (0, 64 * 64)
    rect = linear4bit(storage, out_features=32)
    assert count_parameters(nn.Sequential(layer, rect, nn.Linear(64, 8))) == (8 * 64 + 8, 64 * 64 + 32 * 64 + 8 * 65)


def test_a_4bit_weight_not_yet_quantized_counts_as_it_is():
    layer = bnb.nn.Linear4bit(64, 32, bias=False, quant_storage=torch.bfloat16)  # still on its way to a device
    assert not layer.weight.bnb_quantized
    assert count_parameters(layer) == (0, 64 * 32)


def test_a_quantized_model_counts_as_many_parameters_as_the_plain_one(tiny_spec, tokenizer):
    plain = load_model(tiny_spec, tokenizer)
    for storage in ("auto", "bfloat16"):
        config = QLoRA(quant_storage=storage).quantization_config(torch.float32)
        quantized = load_model(tiny_spec, tokenizer, quantization_config=config, device_map={"": "cpu"})
        assert type(quantized.model.layers[0].mlp.up_proj).__name__ == "Linear4bit"
        assert count_parameters(quantized)[1] == count_parameters(plain)[1], storage


def test_trainable_count_is_the_adapter(tiny_model):
    total = count_parameters(tiny_model)[1]
    model = LoRA(r=2, target_modules=["q_proj"]).apply(tiny_model)
    # q_proj of the tiny Llama is 64 x 64 in each of its 2 layers: A (2 x 64) + B (64 x 2)
    assert count_parameters(model) == (2 * (2 * 64 + 64 * 2), total + 2 * (2 * 64 + 64 * 2))


def test_capabilities_default_to_what_most_strategies_do():
    assert capability(LoRA(), "mergeable") and capability(LoRA(), "supports_gradient_checkpointing")
    assert not capability(LoRA(), "prompt_style") and capability(PromptTuning(), "prompt_style")
    assert not capability(PromptTuning(), "mergeable")
    assert capability(object(), "mergeable") and not capability(object(), "prompt_style")


def test_state_dict_bytes_counts_tied_tensors_once():
    weight = torch.zeros(4, 8)
    state = {"a": weight, "b": weight, "c": torch.zeros(3, dtype=torch.bfloat16)}
    assert state_dict_bytes(state) == 4 * 8 * 4 + 3 * 2
