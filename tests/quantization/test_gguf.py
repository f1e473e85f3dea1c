"""GGUF export (`lightft export --format gguf`): the file transformers and llama.cpp read back, on the tiny Llama.

One short LoRA run is exported as f16, q8_0 and q4_0; each reloads through transformers' GGUF loader to the merged
model's logits (exactly, once the merged weights are rounded as the file stores them; within the quant's error
otherwise) with the same tokenizer and chat template. Bad input is refused with one line and leaves `--out` alone.
"""

import copy
import json
import shutil

import gguf
import lightning.pytorch as pl
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from lightft import RewardModelModule
from lightft.callbacks import VerifiedCheckpoint
from lightft.cli import main
from lightft.commands.export import GGUF_TOLERANCE, export, load_trained
from lightft.errors import LightFTError
from lightft.models.loading import ModelSpec
from lightft.optim import OptimizerConfig, SchedulerConfig
from lightft.peft import LoRA
from lightft.quantization.gguf import _pre_tokenizer_name, check_gguf, gguf_file_name, round_like_gguf, write_gguf
from tests.conftest import TINY
from tests.helpers.preference import pair_data
from tests.helpers.preference import trainer as pair_trainer
from tests.modules.test_sft import datamodule, module, trainer

PROBE = torch.tensor([[1, 5, 9, 33, 70, 100, 250, 400, 3, 17, 201, 511]])
QUANTS = ("f16", "q8_0", "q4_0")
# ||reload - merged float|| / ||merged float|| on PROBE, measured on this run: f16 9.0e-4, q8_0 1.2e-2, q4_0 0.29
# (4 bits moves a tiny random-init model a lot: top-1 agreement 50%); the exact check below is what catches a bad file
TOLERANCE = {"f16": 2e-3, "q8_0": 3e-2, "q4_0": 0.5}
CHAT = [{"role": "user", "content": "Log this order: Mei wants two lattes, isn't it?"}]


def logits(model):
    with torch.no_grad():
        return model(input_ids=PROBE).logits.float()


def train(root, spec, steps, peft):
    pl.seed_everything(0)
    ckpt = VerifiedCheckpoint(dirpath=root, save_last=True)
    trainer(root, max_steps=steps, callbacks=[ckpt], enable_checkpointing=True).fit(
        module(spec, peft=peft, lr=1e-2), datamodule(spec)
    )
    return root / "last.ckpt"


@pytest.fixture(scope="module")
def lora_ckpt(tmp_path_factory, tiny_spec):
    return train(tmp_path_factory.mktemp("lora"), tiny_spec, 3, LoRA(r=4, dropout=0.0))


@pytest.fixture(scope="module")
def exports(tmp_path_factory, lora_ckpt):
    """The LoRA run exported once per quant: {quant: directory}."""
    root = tmp_path_factory.mktemp("gguf")
    for quant in QUANTS:
        export(str(lora_ckpt), str(root / quant), format="gguf", quant=quant, device="cpu")
    return {quant: root / quant for quant in QUANTS}


@pytest.fixture(scope="module")
def merged(lora_ckpt):
    trained = load_trained(lora_ckpt, quantize=False)
    return trained.peft.merge(trained.model).float().eval(), trained.tokenizer


@pytest.mark.parametrize("quant", QUANTS)
def test_transformers_reloads_each_quant_to_the_merged_models_logits(exports, merged, quant):
    model, _ = merged
    name = gguf_file_name(quant)
    assert sorted(p.name for p in exports[quant].iterdir()) == ["lightft.json", name]
    reloaded = AutoModelForCausalLM.from_pretrained(exports[quant], gguf_file=name).eval()
    got, want = logits(reloaded), logits(model)
    error = float((got - want).norm() / want.norm())  # relative RMS, as the export's own check
    assert 0 < error < TOLERANCE[quant] <= GGUF_TOLERANCE[quant], error
    rounded = copy.deepcopy(model)
    round_like_gguf(rounded, quant)  # the file's weights, dequantized: the reload gives exactly its logits
    torch.testing.assert_close(got, logits(rounded), rtol=1e-5, atol=1e-5)
    record = json.loads((exports[quant] / "lightft.json").read_text())
    assert record["format"] == "gguf" and record["gguf_file"] == name and record["quant"] == quant


def test_file_sizes_shrink_with_the_quant(exports):
    size = {q: (exports[q] / gguf_file_name(q)).stat().st_size for q in QUANTS}
    assert size["q4_0"] < size["q8_0"] < size["f16"], size


def test_metadata_mirrors_llama_cpp(exports, merged):
    model, tokenizer = merged
    reader = gguf.GGUFReader(exports["q4_0"] / gguf_file_name("q4_0"))
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    config = model.config
    assert fields["general.architecture"] == "llama" and fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q4_0
    assert fields["llama.embedding_length"] == 64 and fields["llama.block_count"] == 2
    assert fields["llama.attention.head_count"] == 4 and fields["llama.attention.head_count_kv"] == 2
    assert fields["llama.rope.dimension_count"] == 16 and fields["llama.vocab_size"] == config.vocab_size
    assert fields["llama.feed_forward_length"] == 128 and fields["llama.context_length"] == 512
    assert fields["llama.rope.freq_base"] == 10000.0
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.chat_template"] == tokenizer.chat_template
    assert fields["tokenizer.ggml.bos_token_id"] == tokenizer.bos_token_id == 1
    assert fields["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id == 2
    assert fields["tokenizer.ggml.padding_token_id"] == tokenizer.pad_token_id
    assert fields["tokenizer.ggml.add_bos_token"] is False
    assert len(fields["tokenizer.ggml.tokens"]) == config.vocab_size and fields["tokenizer.ggml.merges"]
    assert fields["tokenizer.ggml.token_type"][:3] == [gguf.TokenType.CONTROL] * 3  # the chat special tokens
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "Q4_0" and types["output.weight"] == "Q8_0"  # LM head kept at 8 bits
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == "F32"


def test_tokenizer_round_trips(exports, merged):
    _, tokenizer = merged
    reloaded = AutoTokenizer.from_pretrained(exports["q8_0"], gguf_file=gguf_file_name("q8_0"))
    prompt = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert reloaded(prompt)["input_ids"] == tokenizer(prompt)["input_ids"]
    assert reloaded.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True) == prompt
    assert reloaded.chat_template == tokenizer.chat_template


def test_export_through_the_cli_and_generate_from_it(tmp_path, lora_ckpt, capsys):
    out = tmp_path / "cli"
    main(
        ["export", "--ckpt", str(lora_ckpt), "--out", str(out), "--format", "gguf", "--quant", "f32", "--device", "cpu"]
    )
    main(["generate", "--model", str(out), "--prompt", "Mei wants two lattes.", "--max_new_tokens", "3",
          "--device", "cpu"])  # fmt: skip
    printed = capsys.readouterr().out
    assert f"exported GGUF (f32) {gguf_file_name('f32')} to {out}" in printed and "--- completion" in printed
    assert "gguf f32: logits" in printed and "top-1 agreement 100%" in printed


def test_unknown_quant_is_a_one_line_error(tmp_path, lora_ckpt, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt", str(lora_ckpt), "--out", str(tmp_path / "o"), "--format", "gguf", "--quant", "q5_k"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--quant" in err and "q4_0" in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"quant": "q8_0"}, "--quant: applies to --format gguf only"),
        ({"format": "gguf", "dtype": "float16"}, "--dtype: applies to --format hf only"),
    ],
)
def test_options_that_do_not_apply_are_refused(tmp_path, options, says):
    with pytest.raises(LightFTError, match=says):
        export("unused.ckpt", str(tmp_path / "o"), **options)


def test_rows_not_a_multiple_of_32_are_refused_and_out_is_untouched(tmp_path, capsys):
    """A hidden-48 variant: q8_0 names the tensor and suggests f16, which then works."""
    directory = tmp_path / "tiny-48"
    shutil.copytree(TINY, directory)
    config = json.loads((directory / "config.json").read_text())
    config.update(hidden_size=48, head_dim=12, intermediate_size=96)
    (directory / "config.json").write_text(json.dumps(config))
    ckpt = train(tmp_path / "run", ModelSpec(str(directory), random_init=True), 1, LoRA(r=2, dropout=0.0))
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("precious")
    capsys.readouterr()  # the training run's progress bars
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt", str(ckpt), "--out", str(out), "--overwrite", "true", "--format", "gguf"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("lightft: error: --quant: q8_0")
    assert "'token_embd.weight' (model.embed_tokens.weight, 512x48) has rows of 48; use --quant f16" in err
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and not list(tmp_path.glob(".out.partial-*"))
    export(str(ckpt), str(tmp_path / "f16"), format="gguf", quant="f16", device="cpu")
    assert (tmp_path / "f16" / gguf_file_name("f16")).is_file()


def test_a_reward_checkpoint_is_refused(tmp_path, tiny_spec):
    reward = RewardModelModule(
        tiny_spec,
        peft=LoRA(r=2, dropout=0.0),
        optimizer=OptimizerConfig(lr=1e-3),
        scheduler=SchedulerConfig(name="constant"),
        gradient_checkpointing=False,
    )
    run = pair_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    run.fit(reward, datamodule=pair_data(tmp_path, tiny_spec, n_train=8, n_val=8))
    run.save_checkpoint(tmp_path / "rm.ckpt")
    with pytest.raises(LightFTError, match="--format gguf: the checkpoint is a reward model.*GGUF holds causal LMs"):
        export(str(tmp_path / "rm.ckpt"), str(tmp_path / "o"), format="gguf", device="cpu")
    assert not (tmp_path / "o").exists()


def test_an_unsupported_architecture_is_refused(tokenizer):
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=512, n_positions=64))
    with pytest.raises(LightFTError, match=r"architecture 'gpt2' is not supported .*\(supported: llama, qwen2\)"):
        check_gguf(model, tokenizer, "q8_0")


def test_an_unsupported_tokenizer_is_refused(tiny_model):
    unigram = Tokenizer(models.Unigram([("<unk>", 0.0), ("a", -1.0), ("b", -2.0)], unk_id=0, byte_fallback=False))
    with pytest.raises(LightFTError, match="neither byte-level BPE .* nor sentencepiece-style BPE"):
        check_gguf(tiny_model, PreTrainedTokenizerFast(tokenizer_object=unigram, unk_token="<unk>"), "f16")


BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@pytest.mark.parametrize(
    ("pre", "name"),
    [
        (BYTE_LEVEL, "gpt-2"),
        ({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, BYTE_LEVEL]}, "smollm"),
        (
            {
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": LLAMA3}, "behavior": "Isolated", "invert": False},
                    {**BYTE_LEVEL, "use_regex": False},
                ],
            },
            "llama-bpe",
        ),
    ],
)
def test_the_pre_tokenizer_is_named_as_llama_cpp_names_it(pre, name):
    assert _pre_tokenizer_name(pre) == name


def test_an_unknown_pre_tokenizer_is_refused():
    with pytest.raises(LightFTError, match="pre-tokenizer .* is not one the GGUF writer can name"):
        _pre_tokenizer_name({"type": "Whitespace"})


def test_qwen2_and_tied_embeddings_round_trip(tmp_path, tokenizer):
    """Qwen2 (no q/k permutation, q/k/v biases) with tied embeddings: no output.weight, the embedding is the head."""
    torch.manual_seed(0)
    config = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=512, max_position_embeddings=128,
                         tie_word_embeddings=True)  # fmt: skip
    model = Qwen2ForCausalLM(config).eval()
    write_gguf(model, tokenizer, tmp_path / "q.gguf", "q4_0")
    assert "output.weight" not in {t.name for t in gguf.GGUFReader(tmp_path / "q.gguf").tensors}
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="q.gguf").eval()
    assert reloaded.config.tie_word_embeddings and reloaded.config.model_type == "qwen2"
    round_like_gguf(model, "q4_0")
    torch.testing.assert_close(logits(reloaded), logits(model), rtol=1e-5, atol=1e-5)


def test_a_sentencepiece_style_tokenizer_round_trips(tmp_path):
    """Byte-fallback BPE (Llama 2 style) becomes GGUF's `llama` tokenizer with scores, merges and byte tokens."""
    backend = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    backend.train_from_iterator(["the quick brown fox jumps over the lazy dog", "mei wants two lattes"] * 20,
                                trainers.BpeTrainer(vocab_size=320, special_tokens=specials))  # fmt: skip
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    spm = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    spm.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, vocab_size=320))  # fmt: skip
    write_gguf(model, spm, tmp_path / "s.gguf", "f32")
    fields = {k: f.contents() for k, f in gguf.GGUFReader(tmp_path / "s.gguf").fields.items()}
    assert fields["tokenizer.ggml.model"] == "llama" and fields["tokenizer.ggml.add_bos_token"] is True
    reloaded = AutoTokenizer.from_pretrained(tmp_path, gguf_file="s.gguf")
    for text in ("the quick brown fox", "Mei wants 2 lattés!"):
        assert reloaded(text)["input_ids"] == spm(text)["input_ids"], text
    assert reloaded.chat_template == spm.chat_template
