import pytest
import torch

from lightft.data.collate import Collator
from lightft.data.formats import Example
from lightft.data.templates import ExampleEncoder
from lightft.errors import LightFTError
from lightft.losses.sft import mean_token_loss
from lightft.models.loading import load_model
from lightft.peft import FullFineTune, LoRA, QLoRA, count_parameters


def batch_of(tokenizer):
    encoder = ExampleEncoder(tokenizer, 64)
    pairs = [("Log this order: two lattes at Oak Street", '{"item": "latte"}'), ("hi", "hello there")]
    items = [
        encoder.encode(Example([{"role": "user", "content": q}, {"role": "assistant", "content": a}], [1]))
        for q, a in pairs
    ]
    return Collator(tokenizer.pad_token_id)([{"input_ids": e.input_ids, "labels": e.labels} for e in items])


def train(model, batch, steps=8, lr=1e-2):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    losses = []
    for _ in range(steps):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        loss = mean_token_loss(logits, batch["labels"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def flat(param):
    return torch.Tensor(param.data).flatten()  # plain tensor view, also of bitsandbytes' packed 4-bit weights


def snapshot(model):
    return {n: flat(p).clone() for n, p in model.named_parameters()}


STRATEGIES = {
    "full": (FullFineTune(), lambda n: True),
    "lora": (LoRA(r=4, alpha=8, dropout=0.0), lambda n: "lora_" in n),
    "lora-targets": (
        LoRA(r=2, target_modules=["q_proj", "v_proj"], dropout=0.0),
        lambda n: "lora_" in n and ("q_proj" in n or "v_proj" in n),
    ),
    "rslora-dora": (LoRA(r=4, rslora=True, dora=True, dropout=0.0), lambda n: "lora_" in n),
    "qlora": (QLoRA(r=4, dropout=0.0), lambda n: "lora_" in n),
    "qlora-fp4-single": (QLoRA(quant_type="fp4", double_quant=False, r=4, dropout=0.0), lambda n: "lora_" in n),
}


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_strategy_trains_only_its_parameters(name, tiny_spec, tokenizer):
    strategy, should_train = STRATEGIES[name]
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
    before = snapshot(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(should_train(n) for n in trainable)
    losses = train(model, batch, steps=12, lr=1e-2)
    assert losses[-1] < 0.95 * losses[0], losses
    for n, p in model.named_parameters():
        if n in trainable:
            changed = not torch.equal(flat(p), before[n])
            # LoRA's B starts at zero and A gets no gradient on step 1, but both move within a few steps
            assert changed, f"{n} did not train"
        else:
            assert torch.equal(flat(p), before[n]), f"frozen {n} changed"


def test_lora_disabled_is_the_base_model(tiny_spec, tokenizer):
    base = load_model(tiny_spec, tokenizer)
    batch = batch_of(tokenizer)
    with torch.no_grad():
        reference = base(input_ids=batch["input_ids"]).logits
    strategy = LoRA(r=4, dropout=0.0)
    model = strategy.apply(base)
    train(model, batch, steps=3)
    with torch.no_grad(), strategy.disabled(model):
        disabled = model(input_ids=batch["input_ids"]).logits
        torch.testing.assert_close(disabled, reference)
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=batch["input_ids"]).logits, reference)


def test_lora_merge_equals_unmerged(tiny_spec, tokenizer):
    strategy = LoRA(r=4, dropout=0.0)
    model = strategy.apply(load_model(tiny_spec, tokenizer))
    batch = batch_of(tokenizer)
    train(model, batch, steps=3)
    with torch.no_grad():
        unmerged = model(input_ids=batch["input_ids"]).logits
        merged = strategy.merge(model)(input_ids=batch["input_ids"]).logits
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-4)


def test_lora_save_load_roundtrip(tmp_path, tiny_spec, tokenizer):
    strategy = LoRA(r=4, dropout=0.0)
    model = strategy.apply(load_model(tiny_spec, tokenizer))
    batch = batch_of(tokenizer)
    train(model, batch, steps=3)
    strategy.save(model, tmp_path)
    state = strategy.trainable_state_dict(model)
    assert state and all(v.numel() for v in state.values())
    reloaded = strategy.load(load_model(tiny_spec, tokenizer), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(input_ids=batch["input_ids"]).logits, model(input_ids=batch["input_ids"]).logits
        )


def test_full_finetune_has_no_adapter_to_disable(tiny_model):
    with pytest.raises(LightFTError, match="frozen reference copy"):
        FullFineTune().disabled(tiny_model)


@pytest.mark.parametrize("targets", [["q_proj", "wq"], "nothing.*here"])
def test_targets_that_match_nothing_name_the_valid_ones(tiny_model, targets):
    with pytest.raises(LightFTError, match=r"target_modules: .*(down_proj|gate_proj)"):
        LoRA(target_modules=targets).apply(tiny_model)


def test_qlora_config_follows_the_trainer_dtype():
    config = QLoRA().quantization_config(torch.bfloat16)
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    assert QLoRA(compute_dtype="float32").quantization_config(torch.bfloat16).bnb_4bit_compute_dtype == torch.float32


def test_parameter_count_counts_4bit_weights_logically(tiny_spec, tokenizer):
    plain = load_model(tiny_spec, tokenizer)
    quantized = load_model(
        tiny_spec, tokenizer, quantization_config=QLoRA().quantization_config(torch.float32), device_map={"": "cpu"}
    )
    assert count_parameters(quantized)[1] == count_parameters(plain)[1]


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
