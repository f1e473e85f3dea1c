"""GGUF export: a merged causal LM and its tokenizer -> one llama.cpp GGUF file (`lightft export --format gguf`).

The file is what llama.cpp's `convert_hf_to_gguf.py` writes for the same model (its `LlamaModel` / `Qwen2Model`
converters), so llama.cpp, ollama and LM Studio run it, and transformers reloads it with
`from_pretrained(directory, gguf_file=name)`. The `gguf` package does the format: `GGUFWriter` (header, metadata,
tensor data), `get_tensor_name_map` (Hugging Face names -> `blk.N.attn_q.weight`...), `quants.quantize` (the numpy
Q8_0 / Q4_0 block codecs), `SpecialVocab` (merges, special token ids, chat template) and `LlamaHfVocab`. Written here
are only the parts llama.cpp keeps in its converter script rather than in that package:

- the q/k row permutation of `LlamaModel.permute` (llama.cpp's rope pairs neighbouring rows, transformers' the two
  halves of a head);
- the model hyper-parameters under llama.cpp's key names (`TextModel.set_gguf_parameters`);
- the byte-level BPE vocabulary with its token types (`get_vocab_base`: added special tokens are CONTROL, other
  added tokens USER_DEFINED, ids the tokenizer lacks `[PADn]` / UNUSED) and the pre-tokenizer's name, which llama.cpp
  finds by hashing a probe's token ids against a table; here it is read off the tokenizer's pre-tokenizer config;
- the per-tensor type choice (`prepare_tensors`): 1-D tensors and norms stay F32; the rest take `quant`, except
  that `q4_0` keeps the output projection (or the tied embedding, which is that projection) in Q8_0, as
  `llama-quantize` does (it picks Q6_K, and Q8_0 where a row is not a multiple of 256; `gguf` has no Q6_K encoder).

Where llama.cpp's converter falls back to F16 for a tensor whose rows are not a multiple of the block size (32),
this export refuses instead: the user asked for a quantized file and should choose F16 knowingly.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import gguf
import numpy as np
import torch
from torch import nn

from lightft.errors import LightFTError

GGUFQuant = Literal["f32", "f16", "q8_0", "q4_0"]

# Hugging Face model_type -> (llama.cpp architecture, whether q/k rows are permuted). Only architectures whose every
# hyper-parameter transformers' GGUF loader reads back (so the export can be verified by reloading it).
ARCHITECTURES: dict[str, tuple[gguf.MODEL_ARCH, bool]] = {
    "llama": (gguf.MODEL_ARCH.LLAMA, True),
    "qwen2": (gguf.MODEL_ARCH.QWEN2, False),
}
TENSOR_TYPES = {
    "f32": gguf.GGMLQuantizationType.F32,
    "f16": gguf.GGMLQuantizationType.F16,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
    "q4_0": gguf.GGMLQuantizationType.Q4_0,
}
FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
}
# byte-level pre-tokenizers llama.cpp knows by name, as `tokenizers` serialises them (see `_pre_tokenizer_name`)
_GPT2_BYTE_LEVEL = {"type": "ByteLevel", "use_regex": True}
_DIGITS = {"type": "Digits", "individual_digits": True}
# llama.cpp's name for each regex that transformers' GGUF tokenizer loader rebuilds (first match wins)
_PREFERRED_SPLIT_NAMES = ("llama-bpe", "qwen2", "qwen35", "gpt-4o", "tekken")


def gguf_file_name(quant: str) -> str:
    """The file `lightft export --format gguf` writes into `--out`: `model-<quant>.gguf` (e.g. `model-q8_0.gguf`)."""
    return f"model-{quant}.gguf"


@dataclass(frozen=True)
class _Tensor:
    hf_name: str
    gguf_name: str
    data: torch.Tensor  # in the model's (Hugging Face) layout; shares the parameter's storage
    qtype: gguf.GGMLQuantizationType
    heads: int | None  # q/k rows to permute per `_permute` (llama), else None


def check_gguf(model: nn.Module, tokenizer: Any, quant: str) -> None:
    """Refuse, with one line naming the option and the fix, what `write_gguf` cannot write faithfully.

    Checks the architecture, its rope, the tokenizer's kind and, for block quants, that every quantized tensor's rows
    are a multiple of the block size (32).
    """
    _architecture(model.config)
    _tokenizer_kind(_tokenizer_json(tokenizer))
    _tensors(model, quant)


def write_gguf(model: nn.Module, tokenizer: Any, path: str | Path, quant: str, name: str | None = None) -> Path:
    """Write `model` (a merged, unquantized causal LM) and `tokenizer` to the GGUF file `path`.

    Args:
        model: A transformers causal LM of a supported architecture (`ARCHITECTURES`), weights in any float dtype.
        tokenizer: Its tokenizer (a fast one: the vocabulary is read from its `tokenizer.json`); the chat template
            and special tokens go into the file's metadata.
        path: The file to write.
        quant: `f32`, `f16`, `q8_0` or `q4_0` (`general.file_type`); norms and 1-D tensors stay F32.
        name: `general.name` (default: the model's `name_or_path` basename).

    Returns:
        `path`.
    """
    config = model.config
    arch, _ = _architecture(config)
    tensors = _tensors(model, quant)
    n_vocab = model.get_input_embeddings().weight.shape[0]
    path = Path(path)
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch], use_temp_file=True)  # encoded tensors spill to disk
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name or Path(str(getattr(config, "name_or_path", "") or "model")).name)
    _add_hyper_parameters(writer, config, n_vocab, quant)
    _add_tokenizer(writer, tokenizer, n_vocab)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for tensor in tensors:
        writer.add_tensor(tensor.gguf_name, _encode(tensor), raw_dtype=tensor.qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _architecture(config: Any) -> tuple[gguf.MODEL_ARCH, bool]:
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise LightFTError(
            f"--format gguf: architecture '{model_type}' is not supported by the GGUF writer (supported: "
            f"{', '.join(ARCHITECTURES)}); export it with --format hf --merge true and convert it with llama.cpp's "
            "convert_hf_to_gguf.py."
        )
    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise LightFTError(
            f"--format gguf: the model's rope scaling '{rope.get('rope_type', rope.get('type'))}' is not read back by "
            "transformers' GGUF loader, so the export cannot be verified; use --format hf --merge true."
        )
    for flag in ("attention_bias", "mlp_bias") if model_type == "llama" else ():
        if getattr(config, flag, False):
            raise LightFTError(
                f"--format gguf: a llama model with {flag}=true does not reload from GGUF in transformers; "
                "use --format hf --merge true."
            )
    if model_type == "qwen2" and _head_dim(config) != config.hidden_size // config.num_attention_heads:
        raise LightFTError(
            "--format gguf: a qwen2 model with head_dim != hidden_size / num_attention_heads does not reload from "
            "GGUF in transformers; use --format hf --merge true."
        )
    return ARCHITECTURES[model_type]


def _head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _add_hyper_parameters(writer: gguf.GGUFWriter, config: Any, n_vocab: int, quant: str) -> None:
    """llama.cpp's `TextModel.set_gguf_parameters` + `LlamaModel.set_gguf_parameters`, for the keys these use."""
    rope = dict(getattr(config, "rope_parameters", None) or {})
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_file_type(FILE_TYPES[quant])
    writer.add_vocab_size(n_vocab)
    head_dim = _head_dim(config)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // config.num_attention_heads:  # llama.cpp assumes the quotient otherwise
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)


def _tensors(model: nn.Module, quant: str) -> list[_Tensor]:
    """Every tensor of the file: GGUF name, data (q/k permuted for llama), storage type; refuses unfit shapes."""
    config = model.config
    arch, permute = _architecture(config)
    name_map = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    state = model.state_dict()
    head = model.get_output_embeddings()
    tied = head is not None and _same(head.weight, model.get_input_embeddings().weight)
    out = []
    for hf_name, data in state.items():
        if hf_name.startswith("lm_head.") and tied:
            continue  # llama.cpp writes no output.weight for tied embeddings; transformers re-ties on load
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise LightFTError(
                f"--format gguf: the model's tensor '{hf_name}' has no GGUF name for {config.model_type}; "
                "use --format hf --merge true."
            )
        heads = None
        if permute and hf_name.endswith(("q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias")):
            heads = config.num_attention_heads if ".q_proj." in hf_name else config.num_key_value_heads
        out.append(_Tensor(hf_name, gguf_name, data, _storage_type(gguf_name, data, quant, tied), heads))
    for tensor in out:
        _check_blocks(tensor, quant)
    return out


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and (a.data_ptr() == b.data_ptr() or torch.equal(a, b))


def _permute(weights: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's `LlamaModel.permute`: each head's rows from (two halves) to (interleaved pairs) order."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _storage_type(gguf_name: str, data: torch.Tensor, quant: str, tied: bool) -> gguf.GGMLQuantizationType:
    if data.ndim <= 1 or gguf_name.endswith("_norm.weight") or not gguf_name.endswith(".weight"):
        return gguf.GGMLQuantizationType.F32
    head = gguf_name == "output.weight" or (tied and gguf_name == "token_embd.weight")
    if quant == "q4_0" and head:
        return gguf.GGMLQuantizationType.Q8_0  # the LM head at >= 6 bits, as llama-quantize keeps it
    return TENSOR_TYPES[quant]


def _check_blocks(tensor: _Tensor, quant: str) -> None:
    block = gguf.GGML_QUANT_SIZES[tensor.qtype][0]
    if tensor.data.shape[-1] % block:
        shape = "x".join(map(str, tensor.data.shape))
        raise LightFTError(
            f"--quant: {quant} stores {tensor.qtype.name} blocks of {block} values per row, and tensor "
            f"'{tensor.gguf_name}' ({tensor.hf_name}, {shape}) has rows of {tensor.data.shape[-1]}; "
            "use --quant f16 (or f32)."
        )


def _encode(tensor: _Tensor) -> np.ndarray:
    data = tensor.data.detach().to("cpu", torch.float32)
    if tensor.heads is not None:
        data = _permute(data, tensor.heads)
    return gguf.quants.quantize(data.numpy(), tensor.qtype)


@torch.no_grad()
def round_like_gguf(model: nn.Module, quant: str) -> None:
    """Replace, in place, every weight by the value the GGUF file holds for it once dequantized.

    The model then computes what a reload of the file computes (to float rounding), which is how `lightft export`
    tells a faithful file from a mislaid one independently of the quantization error. Blocks run along rows, so
    rounding before or after the q/k row permutation gives the same values.
    """
    for tensor in _tensors(model, quant):
        encoded = gguf.quants.quantize(tensor.data.detach().to("cpu", torch.float32).numpy(), tensor.qtype)
        values = gguf.quants.dequantize(encoded, tensor.qtype).reshape(tensor.data.shape)
        tensor.data.copy_(torch.from_numpy(np.ascontiguousarray(values)))


# --- tokenizer ---------------------------------------------------------------------------------------------------


def _tokenizer_json(tokenizer: Any) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise LightFTError(
            f"--format gguf: the tokenizer ({type(tokenizer).__name__}) has no tokenizer.json (not a fast "
            "tokenizer); GGUF metadata is written from one; use --format hf --merge true."
        )
    return json.loads(backend.to_str())


def _tokenizer_kind(tokenizer_json: dict[str, Any]) -> str:
    """`gpt2` (byte-level BPE) or `llama` (sentencepiece-style BPE with byte fallback): `tokenizer.ggml.model`."""
    model = tokenizer_json.get("model", {})
    decoder = (tokenizer_json.get("decoder") or {}).get("type")
    if model.get("type") == "BPE" and model.get("byte_fallback") and decoder == "Sequence":
        return "llama"
    if model.get("type") == "BPE" and not model.get("byte_fallback") and decoder == "ByteLevel":
        _pre_tokenizer_name(tokenizer_json.get("pre_tokenizer"))
        return "gpt2"
    raise LightFTError(
        f"--format gguf: the tokenizer ({model.get('type')} model, {decoder} decoder) is neither byte-level BPE "
        "(GGUF 'gpt2') nor sentencepiece-style BPE (GGUF 'llama'), the kinds the GGUF writer supports; "
        "use --format hf --merge true."
    )


def _pre_tokenizer_name(pre: dict[str, Any] | None) -> str:
    """`tokenizer.ggml.pre` for a byte-level BPE tokenizer, from its pre-tokenizer's configuration."""
    steps = (pre or {}).get("pretokenizers", [pre] if pre else [])
    if len(steps) == 1 and _is(steps[0], _GPT2_BYTE_LEVEL):
        return "gpt-2"
    if len(steps) == 2 and _is(steps[0], _DIGITS) and _is(steps[1], _GPT2_BYTE_LEVEL):
        return "smollm"  # SmolLM's digits-then-GPT-2 split
    if len(steps) == 2 and steps[0].get("type") == "Split" and steps[1].get("type") == "ByteLevel":
        name = _split_name(steps[0].get("pattern", {}).get("Regex"))
        if name is not None:
            return name
    raise LightFTError(
        f"--format gguf: the tokenizer's pre-tokenizer ({json.dumps(pre)[:120]}) is not one the GGUF writer can "
        "name for llama.cpp (gpt-2, smollm, llama-bpe, qwen2, gpt-4o, tekken); use --format hf --merge true."
    )


def _is(step: dict[str, Any], want: dict[str, Any]) -> bool:
    return all(step.get(key) == value for key, value in want.items())


def _split_name(regex: str | None) -> str | None:
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    names = [name for name, pattern in GGUF_PRE_TOKENIZER_SPLITS.items() if pattern == regex]
    return next((n for n in _PREFERRED_SPLIT_NAMES if n in names), names[0] if names else None)


def _add_tokenizer(writer: gguf.GGUFWriter, tokenizer: Any, n_vocab: int) -> None:
    """Vocabulary, merges, special token ids, add_bos_token and the chat template (llama.cpp's `set_vocab`)."""
    tokenizer_json = _tokenizer_json(tokenizer)
    kind = _tokenizer_kind(tokenizer_json)
    if len(tokenizer) > n_vocab:
        raise LightFTError(
            f"--format gguf: the tokenizer has {len(tokenizer)} tokens but the model's embeddings only {n_vocab} "
            "rows; the checkpoint's tokenizer and model disagree."
        )
    with tempfile.TemporaryDirectory(prefix="lightft-gguf-tokenizer-") as tmp:
        tokenizer.save_pretrained(tmp)  # SpecialVocab / LlamaHfVocab read the saved files, as llama.cpp does
        writer.add_tokenizer_model(kind)
        if kind == "gpt2":
            tokens, types = _byte_level_vocab(tokenizer, n_vocab)
            writer.add_tokenizer_pre(_pre_tokenizer_name(tokenizer_json.get("pre_tokenizer")))
        else:
            tokens, types, scores = _sentencepiece_vocab(Path(tmp), n_vocab)
            writer.add_tokenizer_pre("default")
            writer.add_token_scores(scores)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        config = json.loads((Path(tmp) / "tokenizer_config.json").read_text())
        if isinstance(config.get("add_prefix_space"), bool):
            writer.add_add_space_prefix(config["add_prefix_space"])
        special = gguf.SpecialVocab(tmp, load_merges=True, n_vocab=n_vocab)
    special.add_special_token["bos"] = _adds_bos(tokenizer)
    special.add_to_gguf(writer, quiet=True)
    if special.chat_template is None and getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


def _adds_bos(tokenizer: Any) -> bool:
    ids = tokenizer("a")["input_ids"]
    return tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id


def _byte_level_vocab(tokenizer: Any, n_vocab: int) -> tuple[list[str], list[int]]:
    """llama.cpp's `get_vocab_base`: the tokens as the vocabulary spells them, with their GGUF token types."""
    reverse = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(n_vocab):
        token = reverse.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _sentencepiece_vocab(directory: Path, n_vocab: int) -> tuple[list[bytes], list[int], list[float]]:
    """llama.cpp's `_set_vocab_llama_hf` (`gguf.LlamaHfVocab`), padded to the embedding rows."""
    vocab = gguf.LlamaHfVocab(directory)
    tokens, types, scores = [], [], []
    for text, score, token_type in _padded(vocab.all_tokens(), n_vocab):
        tokens.append(text)
        scores.append(score)
        types.append(token_type)
    return tokens, types, scores


def _padded(items: Iterator[tuple[bytes, float, Any]], n_vocab: int) -> Iterator[tuple[bytes, float, Any]]:
    count = 0
    for item in items:
        count += 1
        yield item
    for index in range(count, n_vocab):
        yield f"[PAD{index}]".encode(), -1000.0, gguf.TokenType.UNUSED
