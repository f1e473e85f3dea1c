"""`lightft export`: a training checkpoint -> a standard Hugging Face artefact, verified by reloading it.

Without `--merge`: the PEFT strategy's own format (for LoRA/QLoRA a peft adapter directory that
`peft.PeftModel.from_pretrained` loads). With `--merge`: a merged safetensors model that
`AutoModelForCausalLM.from_pretrained` loads (QLoRA merges into an unquantized base); reward models export as
`AutoModelForSequenceClassification` models, their scalar head saved with the adapter. Both get the tokenizer and a
`lightft.json` naming the base, and are reloaded and compared on a probe input before the command succeeds.
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

from lightft.checkpoints import read_checkpoint
from lightft.checkpoints.hooks import PRECISION_KEY
from lightft.checkpoints.hparams import plain_data
from lightft.errors import LightFTError
from lightft.memory import compute_dtype
from lightft.models.loading import ModelSpec, load_model, load_tokenizer, resolve_device, savable
from lightft.modules.base import LightFTModule

METADATA = "lightft.json"
HEAD_FILE = "score.safetensors"  # a reward head the PEFT strategy's own format does not hold


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


def _probe(model: nn.Module) -> torch.Tensor:
    ids = (torch.arange(1, 17).unsqueeze(0) % model.config.vocab_size).to(model.device)
    with torch.no_grad():
        return model(input_ids=ids).logits


def export(
    ckpt: str,
    out: str,
    merge: bool = False,
    dtype: Literal["keep", "float32", "bfloat16", "float16"] = "keep",
    overwrite: bool = False,
    device: str = "auto",
) -> None:
    """Export a lightft checkpoint as a peft adapter directory or, with --merge true, a merged model.

    Args:
        ckpt: A checkpoint written by `lightft fit` (e.g. runs/x/checkpoints/last.ckpt): a file, or the directory
            FSDP2 (sharded) or DeepSpeed writes.
        out: Output directory (must not exist or be empty unless --overwrite true).
        merge: Fold the adapter into the base and save a full model.
        dtype: Dtype of the saved weights (merged export); `keep` saves them as trained (a `bf16-true` run:
            bfloat16).
        overwrite: Replace a non-empty output directory.
        device: Where the model is rebuilt, merged and verified: `auto` (CUDA when present), `cpu`, `cuda[:N]`.
    """
    target = Path(out)
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise LightFTError(f"--out: '{target}' exists and is not empty; choose another directory or --overwrite true.")
    module = load_trained(ckpt, quantize=not merge, device=resolve_device(device)[0])
    expected = _probe(module.model)
    # write and verify beside the target, then swap: a failed export leaves whatever was at `out` untouched
    staging = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _write(module, staging, merge, dtype, ckpt)
        _verify(staging, expected, exact=dtype == "keep", device=module.model.device)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    print(f"exported {'merged model' if merge else 'adapter'} to {target}")


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
        if head == "reward" and not any(
            "score" in k for k in module.peft.trainable_state_dict(module.model)
        ):
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
    tokenizer = load_tokenizer(ModelSpec(str(directory)), key="--model")
    head = record.get("head", "causal_lm")
    dtype_name = str(dtype).removeprefix("torch.")
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


def _verify(directory: Path, expected: torch.Tensor, exact: bool, device: torch.device) -> None:
    """Reload the export (in the trained logits' dtype) and require the trained module's logits on a probe input."""
    files = list(directory.glob("*.safetensors"))
    if not files or any(f.stat().st_size == 0 for f in files):
        raise RuntimeError(f"export to {directory} wrote no weights")
    model, _ = load_exported(directory, expected.dtype, device)
    got = _probe(model)
    # float32 reproduces to rounding; 16-bit weights reload bit-equal, but peft computes a reloaded adapter in float32
    tolerance = (1e-4 if expected.dtype == torch.float32 else 2e-2) if exact else 5e-2
    if not torch.allclose(got.float(), expected.float(), atol=tolerance, rtol=tolerance):
        raise RuntimeError(
            f"export to {directory} reloads with different logits (max diff {(got - expected).abs().max()})"
        )
