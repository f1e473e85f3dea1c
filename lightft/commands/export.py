"""`lightft export`: a training checkpoint -> a standard Hugging Face artefact, verified by reloading it.

Without `--merge`: the PEFT strategy's own format (for LoRA/QLoRA a peft adapter directory that
`peft.PeftModel.from_pretrained` loads). With `--merge`: a merged safetensors model that
`AutoModelForCausalLM.from_pretrained` loads (QLoRA merges into an unquantized base); reward models export as
`AutoModelForSequenceClassification` models, their scalar head saved with the adapter. Both get the tokenizer and a
`lightft.json` naming the base, and are reloaded and compared on a probe input before the command succeeds.

With `--format gguf`: one llama.cpp file, `<out>/model-<quant>.gguf` (`lightft.quantization.gguf`), of the merged model
with its tokenizer and chat template in the metadata, beside `lightft.json`. It is reloaded through transformers'
GGUF loader and must reproduce, to float rounding, the logits of the merged model with its weights rounded as the file
stores them (so a mislaid tensor fails whatever the quantization error), and the trained model's logits within the
quant's error (`GGUF_TOLERANCE`); its tokenizer must encode a probe text to the same ids.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.cli import instantiate_module
from safetensors.torch import load_file, save_file
from torch import nn

from lightft.checkpoints import read_checkpoint, run_checkpoint
from lightft.checkpoints.hooks import PRECISION_KEY
from lightft.checkpoints.hparams import plain_data
from lightft.errors import LightFTError
from lightft.memory import compute_dtype
from lightft.models.loading import ModelSpec, load_model, load_tokenizer, resolve_device, savable
from lightft.modules.base import LightFTModule
from lightft.quantization import ptq, qat
from lightft.quantization.gguf import GGUFQuant, check_gguf, gguf_file_name, round_like_gguf, write_gguf

METADATA = "lightft.json"
HEAD_FILE = "score.safetensors"  # a reward head the PEFT strategy's own format does not hold
DEFAULT_QUANT = "q8_0"
# the most a GGUF reload may move the trained model's logits on the chat-templated TEXT_PROBE, as a relative RMS error
# ||reload - trained|| / ||trained||. Measured: the tiny test Llama (random init + 3 LoRA steps) f16 3e-4, q8_0 6e-3,
# q4_0 4.8e-2; SmolLM2-135M-Instruct + 2 LoRA steps f16 9e-4, q8_0 3.5e-2, q4_0 0.52 (top-1 agreement 61%: a 135M model
# suffers at 4 bits). The limits leave room above those (q4_0's only catches a result as large as the signal: an
# overflow, a broken model); a mislaid tensor is caught by the exact comparison with the rounded weights instead.
GGUF_TOLERANCE = {"f32": 1e-3, "f16": 1e-2, "q8_0": 0.1, "q4_0": 1.0}
WIDER = {"f16": "f32", "q8_0": "f16 or f32", "q4_0": "q8_0, f16 or f32"}
TEXT_PROBE = "Hello world! The 3 quick brown foxes jumped over 12 lazy dogs, didn't they?"


def load_trained(ckpt: str | Path, quantize: bool = True, device: str | torch.device = "cpu") -> LightFTModule:
    """Rebuild the module a checkpoint was written by (any strategy), with its trained weights, in eval mode.

    The model is built in the run's dtype (its `trainer.precision`, kept in the checkpoint) on `device`.
    """
    path = Path(ckpt)
    checkpoint = read_checkpoint(path)  # a file, FSDP2 shards or a DeepSpeed directory
    hparams = dict(checkpoint.get("hyper_parameters", {}))
    hparams.pop("_instantiator", None)  # Lightning's marker for load_from_checkpoint, not an init argument
    if "_class_path" not in hparams:
        raise LightFTError(f"--ckpt: '{path}' was not written by lightft (no hyper-parameters); nothing to export.")
    module = instantiate_module(LightFTModule, hparams)
    module.gradient_checkpointing = False
    module.trained_precision, module.load_device = checkpoint.get(PRECISION_KEY), torch.device(device)
    module.tokenizer = load_tokenizer(module.model_spec)
    module.model = module.build_model(quantize=quantize).to(device)
    if str(module.trained_precision).endswith("-true"):  # Lightning's precision plugin cast every weight at setup
        module.model.to(compute_dtype(str(module.trained_precision)))
    missing = module.trainable_keys() - set(checkpoint["state_dict"])
    if missing:
        raise LightFTError(f"--ckpt: '{path}' lacks trained weights (e.g. {sorted(missing)[0]}); it is damaged.")
    module.load_state_dict(checkpoint["state_dict"], strict=False)
    return module.eval()


def _import(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def strategy_from(record: dict[str, Any]) -> Any:
    """The PEFT strategy described by a `lightft.json` record."""
    return _import(record["class_path"])(**record.get("init_args", {}))


def _probe(model: nn.Module, ids: torch.Tensor | None = None) -> torch.Tensor:
    if ids is None:
        ids = torch.arange(1, 17).unsqueeze(0) % model.config.vocab_size
    with torch.no_grad():
        return model(input_ids=ids.to(model.device)).logits


def _text_ids(tokenizer: Any) -> torch.Tensor:
    """TEXT_PROBE as a user turn in the chat template (the plain text without one): natural input for the checks."""
    text = TEXT_PROBE
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False)
    return torch.tensor([tokenizer(text)["input_ids"]])


def export(
    ckpt: str,
    out: str,
    merge: bool = False,
    dtype: Literal["keep", "float32", "bfloat16", "float16"] = "keep",
    overwrite: bool = False,
    device: str = "auto",
    format: Literal["hf", "gguf"] = "hf",
    quant: GGUFQuant | None = None,
    run: str | None = None,
) -> None:
    """Export a lightft checkpoint as a peft adapter directory, a merged model (--merge true) or a GGUF file.

    Args:
        ckpt: A checkpoint written by `lightft fit` (e.g. runs/x/checkpoints/last.ckpt): a file, or the directory
            FSDP2 (sharded) or DeepSpeed writes; or `best` / `last` with `--run`: that run's best.ckpt (the best
            validation, `best.monitor`) or last.ckpt.
        out: Output directory (must not exist or be empty unless --overwrite true).
        merge: Fold the adapter into the base and save a full model.
        dtype: Dtype of the saved weights (merged export); `keep` saves them as trained (a `bf16-true` run:
            bfloat16).
        overwrite: Replace a non-empty output directory.
        device: Where the model is rebuilt, merged and verified: `auto` (CUDA when present), `cpu`, `cuda[:N]`.
        format: `hf`: Hugging Face safetensors (adapter, or merged with --merge true). `gguf`: one llama.cpp file,
            `<out>/model-<quant>.gguf`, of the merged model (the adapter folded in, whatever --merge says) with the
            tokenizer and chat template in its metadata, for llama.cpp / ollama, or transformers'
            `from_pretrained(out, gguf_file="model-<quant>.gguf")`. Causal LMs of the llama and qwen2 families.
        quant: Weight type of `--format gguf`: `f32`, `f16`, `q8_0` (default; 8-bit blocks of 32 values) or `q4_0`
            (4-bit blocks of 32; the LM head stays q8_0). Norms stay f32. q8_0/q4_0 need every quantized row to be
            a multiple of 32 values.
        run: The run directory (its trainer.default_root_dir) whose checkpoint `--ckpt best` or `--ckpt last` names.
    """
    ckpt = run_checkpoint(ckpt, run)
    target = Path(out)
    _check_options(format, dtype, quant)
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise LightFTError(f"--out: '{target}' exists and is not empty; choose another directory or --overwrite true.")
    gguf = format == "gguf"
    module = load_trained(ckpt, quantize=not (merge or gguf), device=resolve_device(device)[0])
    converted = module.qat is not None and merge and not gguf
    # natural text, not arbitrary ids: token ids 1..16 are SmolLM2's special tokens, whose untrained embeddings make
    # the logits so sensitive that rounding the exact merged weights to float32 moves them by 1e-4 of their scale
    ids = _text_ids(module.tokenizer)
    with qat.float_forward(module.model):  # a QAT run's float artefacts (adapter, GGUF) hold the float weights
        expected = _probe(module.model, ids)
    merged = _prepare_gguf(module, quant or DEFAULT_QUANT) if gguf else None
    # write and verify beside the target, then swap: a failed export leaves whatever was at `out` untouched
    staging = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        if merged is not None:
            what = _write_gguf(module, merged, staging, quant or DEFAULT_QUANT, ckpt, expected)
        elif converted:
            what = _write_converted(module, staging, ckpt)
        else:
            _write(module, staging, merge, dtype, ckpt)
            _verify(staging, expected, ids, exact=dtype == "keep", device=module.model.device)
            what = "merged model" if merge else "adapter"
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    print(f"exported {what} to {target}")


def _write_converted(module: LightFTModule, directory: Path, ckpt: str) -> str:
    """A QAT run merged and converted with the scheme it trained for (`lightft.quantization.qat.convert`), saved as
    `lightft quantize` saves, and verified by reloading it: its logits are the converted model's.
    """  # noqa: D205
    scheme = module.qat
    assert scheme is not None
    converted = qat.convert(ptq.forget_gguf(module.peft.merge(module.model)).float(), scheme)
    expected = _probe(converted)
    ptq.save_quantized(converted, scheme, directory, {"checkpoint": ckpt, "head": module.describe().head})
    module.tokenizer.save_pretrained(directory)
    got = _probe(ptq.load_quantized(directory, converted.device))
    if not torch.allclose(got, expected, atol=1e-5, rtol=1e-5):
        raise RuntimeError(
            f"export to {directory} reloads with different logits (max diff {(got - expected).abs().max()})"
        )
    return f"merged model converted to {scheme.label()} (trained with QAT)"


def _check_options(format: str, dtype: str, quant: str | None) -> None:
    if format == "hf" and quant is not None:
        raise LightFTError("--quant: applies to --format gguf only; drop --quant or add --format gguf.")
    if format == "gguf" and dtype != "keep":
        raise LightFTError(
            "--dtype: applies to --format hf only; a GGUF file's weight type is --quant (f32, f16, q8_0, q4_0)."
        )


def _prepare_gguf(module: LightFTModule, quant: str) -> nn.Module:
    """The merged float32 causal LM a GGUF file is written from, after refusing what GGUF cannot hold."""
    if module.describe().head != "causal_lm":
        raise LightFTError(
            f"--format gguf: the checkpoint is a {module.describe().head} model (a sequence-classification head); "
            "GGUF holds causal LMs only; export it with --format hf."
        )
    try:
        merged = savable(module.peft.merge(module.model)).float().eval()
    except LightFTError as err:  # a strategy with nothing to fold into the weights (prompt tuning, bottleneck)
        raise LightFTError(f"--format gguf: a GGUF file holds the merged model, and {err}") from err
    check_gguf(merged, module.tokenizer, quant)
    return merged


def _write_gguf(
    module: LightFTModule, merged: nn.Module, directory: Path, quant: str, ckpt: str, expected: torch.Tensor
) -> str:
    """Write `model-<quant>.gguf` + `lightft.json` into `directory` and verify them; consumes `merged`'s weights."""
    name = gguf_file_name(quant)
    write_gguf(merged, module.tokenizer, directory / name, quant, name=Path(module.model_spec.path).name)
    record = {
        "base": module.model_spec.to_dict(),
        "peft": plain_data(module.peft),
        "head": "causal_lm",
        "merged": True,
        "format": "gguf",
        "gguf_file": name,
        "quant": quant,
        "checkpoint": ckpt,
    }
    (directory / METADATA).write_text(json.dumps(record, indent=2))
    round_like_gguf(merged, quant)  # what the file holds, dequantized: a faithful reload reproduces its logits
    with qat.float_forward(merged):  # a QAT run's merged layers: the file holds their float weights
        rounded = _probe(merged, _text_ids(module.tokenizer))
    _verify_gguf(directory, expected, rounded, quant, module.tokenizer)
    return f"GGUF ({quant}) {name}"


def _write(module: LightFTModule, directory: Path, merge: bool, dtype: str, ckpt: str) -> None:
    head = module.describe().head
    record = {
        "base": module.model_spec.to_dict(),
        "peft": plain_data(module.peft),
        "head": head,
        "merged": merge,
        "checkpoint": ckpt,
    }
    if merge:
        merged = savable(module.peft.merge(module.model))
        if dtype != "keep":
            merged = merged.to(getattr(torch, dtype))
        merged.save_pretrained(directory)
    else:
        module.peft.save(module.model, directory)
        if head == "reward" and not any("score" in k for k in module.peft.trainable_state_dict(module.model)):
            head = {k: v.contiguous() for k, v in module.model.named_parameters() if k.split(".")[-2] == "score"}
            save_file({k.rsplit(".", 1)[-1]: v for k, v in head.items()}, directory / HEAD_FILE)
    module.tokenizer.save_pretrained(directory)
    (directory / METADATA).write_text(json.dumps(record, indent=2))


def load_exported(
    directory: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[nn.Module, Any]:
    """Model and tokenizer from a `lightft export` directory (adapter over its base, or merged), in `dtype` on
    `device`.
    """  # noqa: D205
    directory = Path(directory)
    record = json.loads((directory / METADATA).read_text())
    dtype_name = str(dtype).removeprefix("torch.")
    if record.get("format") == "gguf":  # weights and tokenizer both in the GGUF file
        spec = ModelSpec(str(directory), gguf_file=record["gguf_file"], dtype=dtype_name)  # type: ignore[arg-type]
        tokenizer = load_tokenizer(spec, key="--model")
        return load_model(spec, tokenizer, key="--model").to(device).eval(), tokenizer
    tokenizer = load_tokenizer(ModelSpec(str(directory)), key="--model")
    head = record.get("head", "causal_lm")
    if record["merged"]:
        spec = ModelSpec(str(directory), dtype=dtype_name)  # type: ignore[arg-type]
        return load_model(spec, tokenizer, key="--model", head=head).to(device).eval(), tokenizer
    strategy = strategy_from(record["peft"])
    spec = replace(ModelSpec(**record["base"]), dtype=dtype_name)  # type: ignore[arg-type]
    quantization = strategy.quantization_config(dtype)
    device_map = {"": str(device)} if quantization is not None else None
    base = load_model(
        spec, tokenizer, quantization_config=quantization, device_map=device_map, key="base model", head=head
    )
    if (directory / HEAD_FILE).is_file():
        base.score.load_state_dict(load_file(directory / HEAD_FILE))
    return strategy.load(base.to(device), directory).to(device).eval(), tokenizer


def _verify(directory: Path, expected: torch.Tensor, ids: torch.Tensor, exact: bool, device: torch.device) -> None:
    """Reload the export (in the trained logits' dtype) and require the trained module's logits on input `ids`."""
    files = list(directory.glob("*.safetensors"))
    if not files or any(f.stat().st_size == 0 for f in files):
        raise RuntimeError(f"export to {directory} wrote no weights")
    model, _ = load_exported(directory, expected.dtype, device)
    got = _probe(model, ids)
    # float32 reproduces to rounding; 16-bit weights reload bit-equal, but peft computes a reloaded adapter in float32.
    # Rounding grows with the logits' scale: a merged W + BA sums in another order than Wx + B(Ax), e.g. 7e-5 on
    # SmolLM2's logits of the text probe (|max| ~ 36) after two DPO rounds, so the bound is relative to the largest.
    tolerance = (1e-4 if expected.dtype == torch.float32 else 2e-2) if exact else 5e-2
    scale = max(1.0, float(expected.float().abs().max()))
    if not torch.allclose(got.float(), expected.float(), atol=tolerance * scale, rtol=tolerance):
        raise RuntimeError(
            f"export to {directory} reloads with different logits (max diff {(got - expected).abs().max()})"
        )


def _verify_gguf(directory: Path, expected: torch.Tensor, rounded: torch.Tensor, quant: str, tokenizer: Any) -> None:
    """Reload a GGUF export with transformers and hold it to the model it was written from, on `_text_ids`.

    `rounded`: the merged model's logits with its weights rounded as the file stores them; the reload must give them
    to float rounding. `expected`: the trained model's; the reload's relative RMS error must stay within
    `GGUF_TOLERANCE[quant]` (+2e-2 when they were computed in 16 bits). The tokenizer must encode the text alike.
    """
    model, reloaded = load_exported(directory, torch.float32, rounded.device)
    got = _probe(model, _text_ids(tokenizer)).float()
    scale = max(float(rounded.abs().max()), 1.0)
    if not torch.allclose(got, rounded, rtol=1e-4, atol=1e-4 * scale):
        raise RuntimeError(
            f"export to {directory} reloads with other logits than its {quant} weights give "
            f"(max diff {(got - rounded).abs().max():.3g}): the GGUF file is not faithful"
        )
    expected = expected.float()
    error = float((got - expected).norm() / expected.norm().clamp_min(1e-6))
    limit = GGUF_TOLERANCE[quant] + (2e-2 if expected.dtype != torch.float32 else 0.0)
    if not error <= limit and quant in WIDER:  # `not <=`: a NaN (an f16 overflow) fails too
        raise LightFTError(
            f"--quant: {quant} moves the logits of a probe text by {error:.1%} (relative RMS; limit {limit:.0%}); "
            f"use a wider type (--quant {WIDER[quant]})."
        )
    if not error <= limit:
        raise RuntimeError(f"export to {directory} reloads {error:.2g} (relative RMS) from the trained logits")
    # plain text: transformers rebuilds a legacy sentencepiece tokenizer that spaces text after special tokens anew
    if reloaded(TEXT_PROBE)["input_ids"] != tokenizer(TEXT_PROBE)["input_ids"] or (
        reloaded.chat_template != tokenizer.chat_template
    ):
        raise RuntimeError(f"export to {directory}: the GGUF tokenizer or chat template differs from the original")
    agree = float((got.argmax(-1) == expected.argmax(-1)).float().mean())
    print(f"gguf {quant}: logits {error:.2%} (relative RMS) from the trained model's; top-1 agreement {agree:.0%}")
