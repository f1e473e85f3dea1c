"""Every PEFT strategy on the tiny Llama: trains only its own parameters, leaves the base bit-identical,
`disabled()` is the base model (full fine-tuning has none to disable), save -> load reproduces the logits, merge
equals unmerged where it is defined. Method-specific behaviour: tests/peft/test_lora.py and the other test files
beside this one."""

import pytest
import torch

from lightft.data.formats import Example
from lightft.data.templates import ExampleEncoder
from lightft.errors import LightFTError
from lightft.losses.sft import IGNORE_INDEX, mean_token_loss
from lightft.models.loading import load_model
from lightft.peft import (
    IA3,
    BottleneckAdapter,
    FullFineTune,
    LoRA,
    LoRA8bit,
    PrefixTuning,
    PromptTuning,
    PTuning,
    QLoRA,
)

STRATEGIES = {
    "full": (FullFineTune(), lambda n: True),
    "lora": (LoRA(r=4, dropout=0.0), lambda n: "lora_" in n),
    "dora": (LoRA(r=4, dora=True, dropout=0.0), lambda n: "lora_" in n),
    "qlora": (QLoRA(r=4, dropout=0.0), lambda n: "lora_" in n),
    "qlora-dora": (QLoRA(r=4, dora=True, dropout=0.0), lambda n: "lora_" in n),
    "lora8bit": (LoRA8bit(r=4, dropout=0.0), lambda n: "lora_" in n),
    "ia3": (IA3(), lambda n: "ia3_l" in n),
    "prompt": (PromptTuning(num_virtual_tokens=4), lambda n: "prompt_encoder" in n),
    "ptuning": (PTuning(num_virtual_tokens=4, encoder_hidden_size=16), lambda n: "prompt_encoder" in n),
    "prefix": (PrefixTuning(num_virtual_tokens=4), lambda n: "prompt_encoder" in n),
    "bottleneck": (BottleneckAdapter(size=8), lambda n: ".adapter." in n),
}


def batch_of(tokenizer):
    """Two short chat examples, right-padded by hand into input ids, attention mask and labels (one batch the
    strategies fit in a few steps)."""
    encoder = ExampleEncoder(tokenizer, 64)
    pairs = [("Log this order: two lattes at Oak Street", '{"item": "latte"}'), ("hi", "hello there")]
    items = [
        encoder.encode(Example([{"role": "user", "content": q}, {"role": "assistant", "content": a}], [1]))
        for q, a in pairs
    ]
    width = max(len(e.input_ids) for e in items)
    batch = {
        "input_ids": torch.full((len(items), width), tokenizer.pad_token_id),
        "attention_mask": torch.zeros(len(items), width, dtype=torch.long),
        "labels": torch.full((len(items), width), IGNORE_INDEX),
    }
    for row, e in enumerate(items):
        n = len(e.input_ids)
        batch["input_ids"][row, :n], batch["labels"][row, :n] = torch.tensor(e.input_ids), torch.tensor(e.labels)
        batch["attention_mask"][row, :n] = 1
    return batch


def flat(param):
    return torch.Tensor(param.data).flatten()  # plain tensor view, also of bitsandbytes' packed 4-bit weights


def base_for(strategy, spec, tokenizer, quantize=True):
    quantization = strategy.quantization_config(torch.float32) if quantize else None
    return load_model(
        spec, tokenizer, quantization_config=quantization, device_map={"": "cpu"} if quantization else None
    )


def logits(model, batch):
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    return out[:, -batch["input_ids"].shape[1] :]  # drop virtual-token positions


def train(model, batch, steps=12, lr=1e-2):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        loss = mean_token_loss(out[:, -batch["input_ids"].shape[1] :], batch["labels"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def trained(tiny_spec, tokenizer, tmp_path_factory):
    """Each strategy trained for a few steps on one batch: (model, base logits, saved dir, snapshot, losses)."""
    batch = batch_of(tokenizer)
    out = {}
    for name, (strategy, _) in STRATEGIES.items():
        torch.manual_seed(0)
        base = base_for(strategy, tiny_spec, tokenizer)
        reference = logits(base, batch)
        model = strategy.apply(base)
        logits(model, batch)  # bitsandbytes repacks 4-bit weights for its CPU kernel when first used through peft
        before = {n: flat(p).clone() for n, p in model.named_parameters()}
        losses = train(model, batch, lr=0.3 if name in ("ia3", "prompt", "ptuning", "prefix") else 1e-2)
        directory = tmp_path_factory.mktemp(name)
        strategy.save(model, directory)
        out[name] = (model, reference, directory, before, losses)
    return out


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_only_the_strategys_parameters_train(name, trained):
    model, _, _, before, losses = trained[name]
    own = STRATEGIES[name][1]
    # soft prompts can only steer a random tiny model a little; weight-based methods fit the batch much faster
    assert losses[-1] < (losses[0] - 0.02 if name in ("prompt", "ptuning") else 0.97 * losses[0]), losses
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(own(n) for n in trainable)
    for n, p in model.named_parameters():
        changed = not torch.equal(flat(p), before[n])
        assert changed == (n in trainable), f"{n}: changed={changed}, trainable={n in trainable}"


@pytest.mark.parametrize("name", [n for n in STRATEGIES if n != "full"])
def test_disabled_is_the_base_model(name, trained, tokenizer):
    model, reference, _, _, _ = trained[name]
    batch = batch_of(tokenizer)
    with STRATEGIES[name][0].disabled(model):
        torch.testing.assert_close(logits(model, batch), reference)
    assert not torch.allclose(logits(model, batch), reference)


def test_full_finetune_has_no_adapter_to_disable(tiny_model):
    with pytest.raises(LightFTError, match="frozen reference copy"):
        FullFineTune().disabled(tiny_model)


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_save_then_load_gives_identical_logits(name, trained, tiny_spec, tokenizer):
    model, _, directory, _, _ = trained[name]
    strategy = STRATEGIES[name][0]
    assert any(f.stat().st_size > 0 for f in directory.glob("*.safetensors"))
    reloaded = strategy.load(base_for(strategy, tiny_spec, tokenizer), directory)
    batch = batch_of(tokenizer)
    torch.testing.assert_close(logits(reloaded, batch), logits(model, batch))


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_merge_equals_unmerged_or_is_refused(name, trained, tiny_spec, tokenizer):
    _, _, directory, _, _ = trained[name]
    strategy = STRATEGIES[name][0]
    # merging happens over an unquantized base (what `lightft export --merge` does for QLoRA / 8-bit LoRA)
    unmerged = strategy.load(base_for(strategy, tiny_spec, tokenizer, quantize=False), directory)
    batch = batch_of(tokenizer)
    expected = logits(unmerged, batch)
    if not getattr(strategy, "mergeable", True):
        with pytest.raises(LightFTError, match="cannot be merged"):
            strategy.merge(unmerged)
        return
    merged = strategy.merge(unmerged)
    assert type(merged).__name__ == "LlamaForCausalLM"
    torch.testing.assert_close(logits(merged, batch), expected, rtol=1e-4, atol=1e-4)
