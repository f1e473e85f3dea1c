"""Post-training quantization on the tiny model: every scheme stores low-bit weights, shrinks the file, reloads to the
same outputs; the scheme knobs (symmetric/affine, per-tensor/channel/group) do what they say.
"""

import copy

import pytest
import torch
from torch import nn

from lightft.errors import LightFTError
from lightft.quantization import ptq
from lightft.quantization.schemes import QuantScheme, linear_filter, quantizable_linears

PROBE = torch.tensor([[1, 5, 9, 33, 70, 100, 250, 400]])
SCHEMES = {  # scheme -> dtype its weights are stored in
    "int8_weight_only": "int8",
    "int4_weight_only": "int8",  # torchao's IntxUnpackedToInt8Tensor: int4 values in an int8 container
    "int8_dynamic": "int8",
    "nf4": "uint8",  # two 4-bit codes per byte
    "fp4": "uint8",
    "llm_int8": "int8",
}


def logits(model):
    with torch.no_grad():
        return model(input_ids=PROBE).logits.float()


@pytest.fixture(scope="module")
def float_dir(tmp_path_factory, tiny_spec, tokenizer):
    from lightft.models.loading import load_model

    out = tmp_path_factory.mktemp("float")
    torch.manual_seed(0)
    ptq.save_float(load_model(tiny_spec, tokenizer), tokenizer, out)
    return out


def quantized(float_dir, scheme: QuantScheme):
    from transformers import AutoModelForCausalLM

    if scheme.library == "bitsandbytes":
        return ptq.quantize_bitsandbytes(float_dir, scheme, "causal_lm", torch.device("cpu"))
    model = AutoModelForCausalLM.from_pretrained(float_dir, dtype=torch.float32)
    return ptq.quantize_torchao(model, scheme)


@pytest.mark.parametrize("name", SCHEMES)
def test_each_scheme_stores_low_bit_weights_shrinks_the_file_and_reloads_identically(tmp_path, float_dir, name):
    scheme = QuantScheme(name)
    model = quantized(float_dir, scheme)
    expected = logits(model)
    ptq.save_quantized(model, scheme, tmp_path / "q", {"source": "test", "head": "causal_lm"})
    reloaded = ptq.load_quantized(tmp_path / "q")
    assert set(ptq.stored_dtypes(reloaded).values()) == {SCHEMES[name]}
    assert ptq.weight_bytes(tmp_path / "q") < ptq.weight_bytes(float_dir)
    torch.testing.assert_close(logits(reloaded), expected, atol=1e-5, rtol=1e-5)
    assert ptq.scheme_of(tmp_path / "q")["scheme"] == name
    # quantization changes the outputs a little, not wildly
    from transformers import AutoModelForCausalLM

    reference = logits(AutoModelForCausalLM.from_pretrained(float_dir, dtype=torch.float32))
    assert 0 < (expected - reference).abs().max() < 0.2


def test_four_bit_weights_take_fewer_bytes_than_eight_bit_ones_with_bitsandbytes(tmp_path, float_dir):
    sizes = {}
    for name in ("nf4", "llm_int8"):
        scheme = QuantScheme(name)
        ptq.save_quantized(quantized(float_dir, scheme), scheme, tmp_path / name, {"head": "causal_lm"})
        sizes[name] = ptq.weight_bytes(tmp_path / name)
    assert sizes["nf4"] < sizes["llm_int8"]


def test_symmetric_has_zero_point_zero_and_affine_does_not(tiny_model):
    layer = dict(quantizable_linears(tiny_model))["model.layers.0.mlp.up_proj"]
    layer.weight.data += 0.05  # skewed weights: an affine zero point moves off 0
    points = {}
    for mapping in ("symmetric", "affine"):
        copy_ = copy.deepcopy(layer)
        ptq.quantize_torchao(nn.Sequential(copy_), QuantScheme("int8_weight_only", mapping=mapping))
        points[mapping] = copy_.weight.zero_point
    assert torch.count_nonzero(points["symmetric"]) == 0
    assert torch.count_nonzero(points["affine"]) > 0


def dequantization_error(layer: nn.Linear, scheme: QuantScheme) -> float:
    copy_ = copy.deepcopy(layer)
    ptq.quantize_torchao(nn.Sequential(copy_), scheme)
    return (copy_.weight.dequantize() - layer.weight).abs().mean().item()


def test_per_channel_error_is_at_most_per_tensor_error_on_uneven_channels():
    torch.manual_seed(0)
    layer = nn.Linear(64, 16, bias=False)
    with torch.no_grad():
        layer.weight *= torch.logspace(-3, 1, 16).unsqueeze(1)  # output channels spanning four decades
    errors = {
        g: dequantization_error(layer, QuantScheme("int8_weight_only", granularity=g))
        for g in ("per_tensor", "per_channel")
    }
    assert errors["per_channel"] <= errors["per_tensor"] / 5


def test_four_bit_error_exceeds_eight_bit_error():
    torch.manual_seed(0)
    layer = nn.Linear(64, 16, bias=False)
    assert dequantization_error(layer, QuantScheme("int8_weight_only")) < dequantization_error(
        layer, QuantScheme("int4_weight_only")
    )


def test_the_heads_and_adapters_stay_float(tiny_model):
    names = [name for name, _ in quantizable_linears(tiny_model)]
    assert len(names) == 2 * 7 and "lm_head" not in names
    assert not linear_filter(nn.Linear(2, 2), "base_model.model.layers.0.q_proj.lora_A.default")
    ptq.quantize_torchao(tiny_model, QuantScheme("int8_weight_only"))
    assert ptq.quantized_with(tiny_model) == "torchao"
    assert type(tiny_model.lm_head.weight) is nn.Parameter and tiny_model.lm_head.weight.dtype == torch.float32


def test_a_group_size_that_does_not_divide_a_layer_is_refused(tiny_model):
    with pytest.raises(LightFTError, match=r"--group_size: 48 does not divide model\.layers\.0\..*64 input features"):
        QuantScheme("int4_weight_only", group_size=48).check(tiny_model)
    QuantScheme("int4_weight_only", group_size=32).check(tiny_model)
    QuantScheme("int4_weight_only", group_size=48, granularity="per_channel").check(tiny_model)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scheme": "int3"}, "--scheme: unknown scheme 'int3'"),
        ({"mapping": "skewed"}, "--mapping: unknown mapping"),
        ({"granularity": "per_row"}, "--granularity: unknown granularity"),
        ({"scheme": "intx_weight_only", "bits": 1}, "--bits: 1"),
        ({"scheme": "int8_static", "granularity": "per_group"}, "--granularity: int8_static takes"),
        ({"scheme": "int8_dynamic", "mapping": "affine"}, "--mapping: int8_dynamic takes symmetric"),
        ({"scheme": "int4_weight_only", "granularity": "per_tensor"}, "--granularity: torchao takes one scale"),
    ],
)
def test_bad_scheme_knobs_are_one_line_errors(kwargs, message):
    with pytest.raises(LightFTError, match=message):
        QuantScheme(**kwargs)


def test_quantizing_an_already_quantized_model_is_refused(tiny_model):
    ptq.quantize_torchao(tiny_model, QuantScheme("int8_weight_only"))
    with pytest.raises(LightFTError, match="--model: 'x' is already quantized \\(torchao\\)"):
        ptq.refuse_quantized(tiny_model, "--model", "x")


def test_keep_float_leaves_the_named_layers_float_in_every_library(tmp_path, float_dir, tiny_model):
    for name in ("int8_weight_only", "nf4"):
        scheme = QuantScheme(name, keep_float=("mlp.down_proj",))
        model = quantized(float_dir, scheme)
        dtypes = ptq.stored_dtypes(model)
        assert {d for n, d in dtypes.items() if "down_proj" in n} == {"float32"}
        assert {d for n, d in dtypes.items() if "down_proj" not in n} == {SCHEMES[name]}
        ptq.save_quantized(model, scheme, tmp_path / name, {"head": "causal_lm"})
        assert ptq.stored_dtypes(ptq.load_quantized(tmp_path / name)) == dtypes
    with pytest.raises(LightFTError, match="--keep_float: '\\(' is not a regular expression"):
        QuantScheme(keep_float=("(",))
    with pytest.raises(LightFTError, match="--keep_float: \\['layers'\\] matches every layer"):
        QuantScheme(keep_float=("layers",)).check(tiny_model)
