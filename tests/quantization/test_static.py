"""Static int8 PTQ on the tiny Llama: calibration hooks, masking, limits, errors, and the quantized model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lightft.errors import LightFTError
from lightft.quantization import observers, static
from lightft.quantization.observers import Calibration
from lightft.quantization.schemes import QuantScheme, quantizable_linears
from lightft.quantization.static import calibrate, quantize_static, real_tokens

PAD = 0  # the tiny tokenizer's pad id
SYMMETRIC = QuantScheme("int8_static", mapping="symmetric", granularity="per_tensor")
AFFINE = QuantScheme("int8_static", mapping="affine", granularity="per_channel")


def token_batch(rows: int, width: int, lengths: list[int] | None = None) -> dict[str, torch.Tensor]:
    """Random tokens, right-padded to `width` after each row's length (default: no padding)."""
    lengths = lengths or [width] * rows
    input_ids = torch.randint(3, 512, (rows, width))
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    return {"input_ids": input_ids.masked_fill(mask == 0, PAD), "attention_mask": mask}


def recording(monkeypatch) -> dict[int, observers.Observer]:
    """Capture the observers `calibrate` makes, in the order of `quantizable_linears`."""
    made: dict[int, observers.Observer] = {}

    def make(calibration, symmetric):
        made[len(made)] = observers.make_observer(calibration, symmetric)
        return made[len(made) - 1]

    monkeypatch.setattr(static, "make_observer", make)
    return made


def pre_hooks(model) -> int:
    return sum(len(module._forward_pre_hooks) for module in model.modules())


@pytest.mark.parametrize(
    ("scheme", "calibration"),
    [
        (SYMMETRIC, Calibration(examples=8)),
        (AFFINE, Calibration(examples=8)),
        (SYMMETRIC, Calibration(observer="histogram", method="percentile", examples=8)),
    ],
    ids=["symmetric-minmax", "affine-minmax", "symmetric-percentile"],
)
def test_static_ptq_quantizes_every_linear_with_its_calibrated_scale(tiny_model, scheme, calibration):
    from torchao.quantization import Int8Tensor

    model = tiny_model.eval()
    batches = [token_batch(4, 16) for _ in range(3)]
    probe = torch.randint(3, 512, (2, 16))
    with torch.no_grad():
        reference = model(input_ids=probe).logits
    qparams = calibrate(model, batches, calibration, scheme)
    names = [name for name, _ in quantizable_linears(model)]
    assert list(qparams) == names and len(names) == 14
    for scale, zero_point in qparams.values():
        assert scale.shape == (1, 1, 1) and scale.dtype == torch.float32 and float(scale) > 0
        if scheme.mapping == "symmetric":
            assert zero_point is None
        else:
            assert zero_point.shape == (1, 1, 1) and zero_point.dtype == torch.int8

    quantize_static(model, scheme, qparams)
    for name, layer in quantizable_linears(model):
        weight = layer.weight
        assert isinstance(weight, Int8Tensor) and weight.qdata.dtype == torch.int8
        per_channel = scheme.resolved_granularity == "per_channel"  # activations stay per tensor either way
        assert weight.scale.numel() == (layer.out_features if per_channel else 1)
        assert torch.equal(weight.act_quant_scale, qparams[name][0])
        if scheme.mapping == "affine":
            assert torch.equal(weight.act_quant_zero_point, qparams[name][1])
    assert not isinstance(model.lm_head.weight, Int8Tensor)
    with torch.no_grad():
        logits = model(input_ids=probe).logits
    # measured on the tiny random Llama (logits std ≈ 0.16, |max| ≈ 0.6): max |Δ| ≈ 0.05, mean |Δ| ≈ 0.003
    difference = (logits - reference).abs()
    assert difference.max() < 0.15 and difference.mean() < 0.01, (difference.max(), difference.mean())
    cosine = torch.nn.functional.cosine_similarity(logits.flatten(), reference.flatten(), dim=0)
    assert cosine > 0.99


def test_calibration_observes_only_real_tokens(tiny_model, monkeypatch):
    made = recording(monkeypatch)
    batch = token_batch(3, 12, lengths=[12, 7, 3])
    calibrate(tiny_model, [batch], Calibration(), SYMMETRIC)
    real = int(batch["attention_mask"].sum())
    for index, (_, layer) in enumerate(quantizable_linears(tiny_model)):
        assert made[index].numel == real * layer.in_features


def test_padding_with_extreme_activations_does_not_move_the_range(tiny_model):
    model = tiny_model.eval()
    with torch.no_grad():  # the pad token's embedding: one huge feature, so padded rows stand out after every norm
        model.get_input_embeddings().weight[PAD] = 0.0
        model.get_input_embeddings().weight[PAD, 0] = 1e4
    padded = token_batch(2, 10, lengths=[10, 4])
    alone = [
        {"input_ids": padded["input_ids"][row : row + 1, :length], "attention_mask": torch.ones(1, length)}
        for row, length in enumerate([10, 4])
    ]
    masked = calibrate(model, [padded], Calibration(), SYMMETRIC)
    unpadded = calibrate(model, alone, Calibration(), SYMMETRIC)
    for name in masked:
        torch.testing.assert_close(masked[name][0], unpadded[name][0], rtol=1e-5, atol=0.0)
    # the same batch with the padding counted as real widens the ranges: the test can see a leak
    unmasked = calibrate(model, [{**padded, "attention_mask": torch.ones(2, 10)}], Calibration(), SYMMETRIC)
    widened = [name for name in masked if float(unmasked[name][0]) > 1.5 * float(masked[name][0])]
    assert "model.layers.0.self_attn.q_proj" in widened, widened


def test_calibration_stops_after_the_examples_and_reads_dicts_and_objects(tiny_model, monkeypatch):
    made = recording(monkeypatch)
    pulled = []

    def batches():
        for index in range(5):
            pulled.append(index)
            batch = token_batch(4, 8)
            yield batch if index % 2 == 0 else SimpleNamespace(**batch)

    calibrate(tiny_model, batches(), Calibration(examples=6), SYMMETRIC)
    assert pulled == [0, 1]  # the second batch is cut to 2 rows; no third one is read
    assert made[0].numel == 6 * 8 * 64


@pytest.mark.parametrize("batches", [[], iter(())], ids=["list", "generator"])
def test_an_empty_calibration_split_is_refused(tiny_model, batches):
    with pytest.raises(LightFTError, match=r"^data\.init_args\.val: the calibration split holds no examples"):
        calibrate(tiny_model, batches, Calibration(), SYMMETRIC, key="data.init_args.val")
    assert pre_hooks(tiny_model) == 0


def test_all_padding_is_refused(tiny_model):
    batch = token_batch(2, 6)
    batch["attention_mask"] = torch.zeros(2, 6, dtype=torch.long)
    with pytest.raises(LightFTError, match="no real tokens"):
        calibrate(tiny_model, [batch], Calibration(), SYMMETRIC)


def test_hooks_are_removed_and_the_mode_restored_also_on_error(tiny_model):
    model = tiny_model.train()
    assert pre_hooks(model) == 0
    calibrate(model, [token_batch(2, 8)], Calibration(), SYMMETRIC)
    assert pre_hooks(model) == 0 and model.training
    broken = {"input_ids": torch.full((2, 8), 10_000), "attention_mask": torch.ones(2, 8)}  # beyond the vocabulary
    with pytest.raises(IndexError):
        calibrate(model, [token_batch(2, 8), broken], Calibration(), SYMMETRIC)
    assert pre_hooks(model) == 0 and model.training
    with pytest.raises(LightFTError, match="no input_ids"):
        calibrate(model, [{"attention_mask": torch.ones(2, 8)}], Calibration(), SYMMETRIC)
    assert pre_hooks(model) == 0


def test_other_schemes_are_refused(tiny_model):
    with pytest.raises(LightFTError, match="^--scheme:"):
        calibrate(tiny_model, [token_batch(2, 8)], Calibration(), QuantScheme("int8_weight_only"))
    with pytest.raises(LightFTError, match="^--scheme:"):
        quantize_static(tiny_model, QuantScheme("int8_dynamic"), {})


def test_real_tokens_follows_the_mask_on_batched_and_flattened_inputs():
    mask = torch.tensor([[True, True, False], [True, False, False]])
    x = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    assert real_tokens(x, mask).tolist() == [[0.0, 1.0], [2.0, 3.0], [6.0, 7.0]]
    assert real_tokens(x.reshape(6, 2), mask).tolist() == [[0.0, 1.0], [2.0, 3.0], [6.0, 7.0]]
    assert real_tokens(x, None) is x
    other = torch.zeros(5, 2)  # not one row per token: observed whole
    assert real_tokens(other, mask) is other


def test_keep_float_layers_are_neither_calibrated_nor_quantized(tiny_model):
    scheme = QuantScheme("int8_static", keep_float=("mlp.down_proj",))
    qparams = calibrate(tiny_model, [token_batch(2, 8)], Calibration(examples=2), scheme)
    assert sorted(qparams) == sorted(n for n, _ in quantizable_linears(tiny_model) if "down_proj" not in n)
    quantize_static(tiny_model, scheme, qparams)
    layers = dict(quantizable_linears(tiny_model))
    assert not hasattr(layers["model.layers.0.mlp.down_proj"].weight, "qdata")
    assert layers["model.layers.0.mlp.up_proj"].weight.qdata.dtype == torch.int8
