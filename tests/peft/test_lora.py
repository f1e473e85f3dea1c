"""LoRA and its variants (`lightft/peft/lora.py`): the update's scale (alpha / r, rsLoRA's alpha / sqrt(r)) and
DoRA's magnitude against hand-written formulas, which parameters each variant trains, what a reloaded adapter keeps,
the argument checks and the bitsandbytes configs of QLoRA and LoRA8bit.

What every strategy shares (trains only its parameters, `disabled()` is the base, save -> load, merge == unmerged,
for LoRA, DoRA, QLoRA, QLoRA-DoRA and LoRA8bit among others) is in tests/peft/test_catalogue.py.
"""

import math

import pytest
import torch

from lightft.errors import LightFTError
from lightft.losses.sft import mean_token_loss
from lightft.models.loading import load_model
from lightft.peft import LoRA, LoRA8bit, QLoRA
from tests.peft.test_catalogue import batch_of, flat, train

# LoRA variants the catalogue does not train; each must train its adapters and nothing else
VARIANTS = {
    "lora-targets": (
        LoRA(r=2, target_modules=["q_proj", "v_proj"], dropout=0.0),
        lambda n: "lora_" in n and ("q_proj" in n or "v_proj" in n),
    ),
    "rslora-dora": (LoRA(r=4, rslora=True, dora=True, dropout=0.0), lambda n: "lora_" in n),
    "qlora-fp4-single": (QLoRA(quant_type="fp4", double_quant=False, r=4, dropout=0.0), lambda n: "lora_" in n),
    "modules-to-save": (
        LoRA(r=2, target_modules=["q_proj"], modules_to_save=["lm_head"], dropout=0.0),
        lambda n: ("lora_" in n and "q_proj" in n) or "lm_head.modules_to_save" in n,
    ),
}


def q_proj(model):
    """Layer 0's LoRA-wrapped query projection."""
    return model.base_model.model.model.layers[0].self_attn.q_proj


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_trains_only_its_parameters(name, tiny_spec, tokenizer):
    strategy, should_train = VARIANTS[name]
    quantization = strategy.quantization_config(torch.float32)
    base = load_model(
        tiny_spec, tokenizer, quantization_config=quantization, device_map={"": "cpu"} if quantization else None
    )
    if quantization is not None:
        assert type(base.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    model = strategy.apply(base)
    batch = batch_of(tokenizer)
    with torch.no_grad():  # bitsandbytes repacks 4-bit weights for its CPU kernel on first use
        model(input_ids=batch["input_ids"])
    before = {n: flat(p).clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(should_train(n) for n in trainable)
    losses = train(model, batch, steps=12, lr=1e-2)
    assert losses[-1] < 0.95 * losses[0], losses
    for n, p in model.named_parameters():
        # LoRA's B starts at zero and A gets no gradient on step 1, but both move within a few steps
        assert torch.equal(flat(p), before[n]) != (n in trainable), f"{n}: trainable={n in trainable}"


@pytest.mark.parametrize(("rslora", "scale"), [(False, 16 / 4), (True, 16 / math.sqrt(4))])
def test_the_update_is_b_a_x_scaled_by_alpha_over_r_or_its_root(tiny_model, rslora, scale):
    model = LoRA(r=4, alpha=16, dropout=0.0, target_modules=["q_proj"], rslora=rslora).apply(tiny_model)
    layer = q_proj(model)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    x = torch.randn(3, 64)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer.base_layer(x))  # B starts at zero: the base model
        b.normal_()
        torch.testing.assert_close(layer(x), layer.base_layer(x) + scale * (x @ a.T @ b.T))


def test_dora_rescales_each_output_row_of_the_updated_weight_to_its_magnitude(tiny_model):
    weight = tiny_model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    model = LoRA(r=4, alpha=8, dropout=0.0, target_modules=["q_proj"], dora=True).apply(tiny_model)
    layer = q_proj(model)
    magnitude = layer.lora_magnitude_vector["default"].weight
    assert magnitude.requires_grad and magnitude.shape == (64,)
    torch.testing.assert_close(magnitude, weight.norm(dim=1))  # starts at the base's row norms: the base model
    x = torch.randn(3, 64)
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
        magnitude.mul_(torch.linspace(0.5, 1.5, 64))
        updated = weight + (8 / 4) * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
        expected = x @ (magnitude[:, None] * updated / updated.norm(dim=1, keepdim=True)).T
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_a_reloaded_adapter_keeps_its_variant(tmp_path, tiny_spec, tokenizer):
    strategy = LoRA(r=4, alpha=16, dropout=0.0, target_modules=["q_proj"], rslora=True, dora=True)
    model = strategy.apply(load_model(tiny_spec, tokenizer))
    strategy.save(model, tmp_path)
    reloaded = q_proj(strategy.load(load_model(tiny_spec, tokenizer), tmp_path))
    assert reloaded.scaling["default"] == pytest.approx(16 / 2) and "default" in reloaded.lora_magnitude_vector


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"r": 0}, "r: rank must be >= 1, got 0"), ({"dropout": 1.0}, r"dropout: must be in \[0, 1\), got 1.0"),
     ({"dropout": -0.1}, "dropout: must be in")],
)  # fmt: skip
def test_arguments_are_checked(kwargs, match):
    with pytest.raises(LightFTError, match=match):
        LoRA(**kwargs)
    with pytest.raises(LightFTError, match=match):
        QLoRA(**kwargs)  # the variants take the same LoRA arguments


def test_qlora_config_follows_the_trainer_dtype():
    config = QLoRA().quantization_config(torch.bfloat16)
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.bfloat16 and config.bnb_4bit_quant_storage == torch.uint8
    assert QLoRA(compute_dtype="float32").quantization_config(torch.bfloat16).bnb_4bit_compute_dtype == torch.float32
    fsdp = QLoRA(quant_type="fp4", double_quant=False, quant_storage="bfloat16").quantization_config(torch.float32)
    assert fsdp.bnb_4bit_quant_type == "fp4" and not fsdp.bnb_4bit_use_double_quant
    assert fsdp.bnb_4bit_quant_storage == torch.bfloat16


def test_lora8bit_config():
    config = LoRA8bit(threshold=4.0, r=2).quantization_config(torch.bfloat16)
    assert config.load_in_8bit and not config.load_in_4bit and config.llm_int8_threshold == 4.0
    assert LoRA().quantization_config(torch.bfloat16) is None


def test_qlora_gradients_are_unchanged_by_an_eval_pass(tiny_spec, tokenizer):
    """bitsandbytes repacks 4-bit weights after an eval-mode, no-grad forward (a validation pass) into a CPU layout
    whose kernel has no backward; lightft keeps the trainable layout, so the next gradients are the same."""
    batch = batch_of(tokenizer)
    grads = []
    for eval_first in (False, True):
        torch.manual_seed(0)
        strategy = QLoRA(r=4, dropout=0.0)
        base = load_model(tiny_spec, tokenizer, quantization_config=strategy.quantization_config(torch.float32),
                          device_map={"": "cpu"})  # fmt: skip
        model = strategy.apply(base)
        if eval_first:
            model.eval()
            with torch.no_grad():
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        model.train()
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        mean_token_loss(out, batch["labels"]).backward()
        # layer 0's LoRA B gradient flows back through every frozen 4-bit layer above it
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if "layers.0" in n and p.grad is not None})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)
