"""What the peft-backed strategies share (`lightft/peft/library.py`): an adapter whose base has no `config.json`
that peft can find (a GGUF file, a `package://` directory, an offline Hub id) is written without peft's "Could not
find a config file" warning, and it carries the embeddings exactly when `load_model` grew them for an added token.
"""

import copy
import warnings

import pytest

from lightft.models.loading import load_model
from lightft.peft import LoRA

OFFLINE_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # HF_HUB_OFFLINE=1 (tests/conftest.py): peft cannot look it up


def adapter(model):
    """A LoRA adapter over `model`, whose base peft knows only by a Hub id it cannot reach."""
    model.name_or_path = OFFLINE_HUB_ID  # what peft records as `base_model_name_or_path`
    strategy = LoRA(r=2, dropout=0.0)
    return strategy, strategy.apply(model)


def written(strategy, model, directory):
    """The adapter's state dict and saved directory, with every warning raised on the way."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = strategy.trainable_state_dict(model)
        strategy.save(model, directory)
    return state, [str(w.message) for w in caught]


def test_an_adapter_over_a_base_peft_cannot_look_up_is_written_without_its_warning(tiny_model, tmp_path):
    state, messages = written(*adapter(tiny_model), tmp_path)
    assert not [m for m in messages if "Could not find a config file" in m], messages
    assert state and all("lora_" in key for key in state)  # the base's own weights stay out


@pytest.mark.parametrize("grown", [False, True])
def test_the_adapter_carries_the_embeddings_when_load_model_grew_them(tiny_spec, tokenizer, tmp_path, grown):
    from safetensors.torch import load_file

    longer = copy.deepcopy(tokenizer)
    if grown:
        longer.add_special_tokens({"additional_special_tokens": ["<|order|>"]})  # one row more than the base has
    base = load_model(tiny_spec, longer)
    assert base.get_input_embeddings().weight.shape[0] == len(tokenizer) + grown  # the tiny Llama has 512 rows
    state, messages = written(*adapter(base), tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    for keys in (state, saved):
        embeddings = [key for key in keys if "embed_tokens" in key or "lm_head" in key]
        assert bool(embeddings) == grown, embeddings
    assert not [m for m in messages if "Could not find a config file" in m], messages
