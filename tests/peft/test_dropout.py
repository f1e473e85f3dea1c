"""LoRA's input dropout fused with its A projection: the same function as peft's `lora_A(dropout(x))` for the same
mask, exact gradients, every plain adapter fused (DoRA and dropout-free ones left alone), unchanged state-dict keys,
and a one-byte mask instead of the noise and the dropped copy in what autograd keeps."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightft.models.loading import load_model
from lightft.peft import LoRA, QLoRA
from lightft.peft.dropout import FusedDropoutA, _DropoutLinear, drop_mask, fuse_lora_dropout


def fused_layer(p=0.25, in_features=12, out_features=4):
    layer = nn.Linear(in_features, out_features, bias=False)
    layer.__class__, layer.p = FusedDropoutA, p
    return layer


def test_forward_is_a_of_the_dropped_input_with_the_generators_mask():
    layer, x = fused_layer(), torch.randn(3, 5, 12)
    torch.manual_seed(7)
    got = layer(x)
    torch.manual_seed(7)
    keep = ~drop_mask(x.shape, 0.25, x.device)
    torch.testing.assert_close(got, F.linear(x * keep / 0.75, layer.weight))
    assert 0 < (~keep).sum() < keep.numel()  # the mask drops some inputs, not all
    assert torch.equal(layer.eval()(x), F.linear(x, layer.weight))  # no dropout in eval mode


def test_the_mask_drops_with_probability_p_in_every_lane():
    masks = torch.stack([drop_mask(torch.Size([4000, 16]), 0.05, torch.device("cpu")) for _ in range(8)]).float()
    assert masks.mean().item() == pytest.approx(0.05, abs=2e-3)
    # four entries come from each 64-bit draw: each of the four positions drops at the same rate
    lanes = masks.reshape(8, -1, 4).mean(dim=(0, 1))
    torch.testing.assert_close(lanes, torch.full((4,), 0.05), atol=3e-3, rtol=0)


def test_gradients_are_exact():
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)

    def seeded(x, weight):
        torch.manual_seed(3)  # gradcheck calls the function many times: the same mask each time
        return _DropoutLinear.apply(x, weight, 0.3)

    assert torch.autograd.gradcheck(seeded, (x, weight))


def test_every_plain_lora_adapter_is_fused_with_the_same_keys(tiny_spec, tokenizer):
    plain = LoRA(r=4, dropout=0.1).apply(load_model(tiny_spec, tokenizer))
    fused = [m for m in plain.modules() if isinstance(m, FusedDropoutA)]
    assert len(fused) == 2 * 7 and all(m.p == pytest.approx(0.1) for m in fused)  # 7 linear layers x 2 layers
    assert not any(isinstance(m, nn.Dropout) for m in plain.modules())
    keys = [k for k in plain.state_dict() if "lora" in k]
    assert keys and all(k.endswith(("lora_A.default.weight", "lora_B.default.weight")) for k in keys)
    assert fuse_lora_dropout(plain) == 0  # idempotent: nothing left to fuse
    for model in (LoRA(r=4, dropout=0.0).apply(load_model(tiny_spec, tokenizer)),
                  LoRA(r=4, dropout=0.1, dora=True).apply(load_model(tiny_spec, tokenizer))):  # fmt: skip
        assert not any(isinstance(m, FusedDropoutA) for m in model.modules())


def test_fused_model_equals_peft_in_eval_and_keeps_a_one_byte_mask(tiny_spec, tokenizer):
    from peft import get_peft_model

    torch.manual_seed(0)
    fused = LoRA(r=4, dropout=0.1).apply(load_model(tiny_spec, tokenizer))
    torch.manual_seed(0)
    base = load_model(tiny_spec, tokenizer)
    unfused = get_peft_model(base, LoRA(r=4, dropout=0.1).peft_config(base))
    with torch.no_grad():
        for p in unfused.parameters():  # LoRA's B starts at zero: make the adapters act
            p.add_(0.01)
        fused.load_state_dict(unfused.state_dict())
    ids = torch.arange(3, 35).reshape(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(fused.eval()(input_ids=ids).logits, unfused.eval()(input_ids=ids).logits)
    kept = {}
    for name, model in (("fused", fused.train()), ("peft", unfused.train())):
        sizes = {}

        def pack(t, sizes=sizes):
            if not isinstance(t, nn.Parameter):
                sizes[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=ids)
        kept[name] = sum(sizes.values())
    # per position and layer: peft keeps a float32 noise mask and the dropped copy for each of the 512 inputs of its
    # 7 adapters (6 x 64 + 128): 8 x 512 bytes; the fused A a one-byte mask each, and each distinct input once in
    # float32 (the frozen layers save none): 512 + 4 x (64 + 64 + 64 + 128); 2 layers x 32 positions
    assert kept["peft"] - kept["fused"] >= (8 * 512 - 512 - 4 * 320) * 2 * 32
    assert kept["fused"] < 0.85 * kept["peft"]


def test_quantized_lora_is_fused_too(tiny_spec, tokenizer):
    strategy = QLoRA(r=4, dropout=0.1)
    model = load_model(tiny_spec, tokenizer, quantization_config=strategy.quantization_config(torch.float32),
                       device_map={"": "cpu"})  # fmt: skip
    wrapped = strategy.apply(model)
    assert sum(isinstance(m, FusedDropoutA) for m in wrapped.modules()) == 14
    ids = torch.arange(3, 19).reshape(1, 16)
    loss = wrapped(input_ids=ids).logits.float().logsumexp(-1).mean()
    loss.backward()
    assert all(p.grad is not None for n, p in wrapped.named_parameters() if "lora_A" in n)
