"""Target presets per architecture, all-linear, GPT-2's Conv1D, and the bottleneck placement across architectures."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

from lightft.errors import LightFTError
from lightft.peft import BottleneckAdapter, LoRA, resolve_targets


def gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=64)).eval()


def neox():
    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    return GPTNeoXForCausalLM(config).eval()


@pytest.mark.parametrize(
    ("build", "preset", "expected"),
    [
        ("llama", "attention", ["q_proj", "k_proj", "v_proj", "o_proj"]),
        ("llama", "mlp", ["gate_proj", "up_proj", "down_proj"]),
        ("gpt2", "attention", ["attn.c_attn", "attn.c_proj"]),
        ("gpt2", "attention+mlp", ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]),
        ("neox", "mlp", ["dense_h_to_4h", "dense_4h_to_h"]),
    ],
)
def test_presets_name_each_architectures_layers(build, preset, expected, tiny_model):
    model = {"llama": lambda: tiny_model, "gpt2": gpt2, "neox": neox}[build]()
    assert resolve_targets(model, preset) == expected


@pytest.mark.parametrize("build", [gpt2, neox])
def test_lora_presets_apply_and_train_on_other_architectures(build):
    model = LoRA(r=2, target_modules="attention", dropout=0.0).apply(build())
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    ids = torch.randint(0, 64, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_B" in n)


@pytest.mark.parametrize("targets", [["q_proj", "wq"], "nothing.*here"])
def test_targets_that_match_nothing_name_the_valid_ones(tiny_model, targets):
    with pytest.raises(LightFTError, match=r"target_modules: .*(down_proj|gate_proj)"):
        LoRA(target_modules=targets).apply(tiny_model)


def test_unknown_architecture_has_no_preset():
    class Custom(torch.nn.Module):
        config = type("Config", (), {"model_type": "my_arch"})()

        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

    with pytest.raises(LightFTError, match="no 'attention' preset for model type 'my_arch'.*proj"):
        resolve_targets(Custom(), "attention")


@pytest.mark.parametrize("build", [gpt2, neox])
@pytest.mark.parametrize("placement", ["attention", "mlp", "both"])
def test_bottleneck_starts_as_the_base_model_on_every_architecture(build, placement):
    base = build()
    ids = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        reference = base(input_ids=ids).logits
    strategy = BottleneckAdapter(size=4, placement=placement)
    model = strategy.apply(base)
    per_layer = 2 if placement == "both" else 1
    assert len([m for m in model.modules() if type(m).__name__ == "AdaptedBlock"]) == 2 * per_layer
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, reference)  # up starts at zero


def test_bottleneck_refuses_a_model_without_decoder_layers():
    with pytest.raises(LightFTError, match="no decoder layer"):
        BottleneckAdapter().check(torch.nn.Sequential(torch.nn.Linear(4, 4)))
