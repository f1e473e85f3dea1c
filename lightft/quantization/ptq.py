"""Post-training quantization of a float model, its saved form, and the one call that loads it back.

torchao schemes quantize in memory with torchao's `quantize_` on `quantizable_linears` (the same layers and configs
a QAT run converts, so QAT-convert and PTQ of the same weights are one code path) and save through transformers'
torchao integration (safetensors with torchao's tensor metadata): `AutoModelForCausalLM.from_pretrained(out)` loads
them. bitsandbytes schemes go through `from_pretrained(float_dir, quantization_config=BitsAndBytesConfig(...))`, the
only way bitsandbytes quantizes, and load the same way.

`int8_static` is the exception: transformers 5.24's torchao loader does not restore the activation scale torchao
keeps beside the int8 weight (an "unprocessed tensors" assertion), so `load_quantized` rebuilds the model from its
config and loads torchao's flattened state dict itself (`torchao.prototype.safetensors.unflatten_tensor_state_dict`).
`load_quantized(out)` loads every scheme; it is the documented call.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn
from transformers import AutoConfig, PreTrainedModel

from lightft.errors import LightFTError
from lightft.models.loading import AUTO_CLASSES, keep_4bit_layout, savable
from lightft.quantization.schemes import QuantScheme, quantizable_linears

RECORD = "lightft.json"  # the same metadata file `lightft export` writes; its `quantization` key marks this kind


def quantized_with(model: nn.Module) -> str | None:
    """How `model` is already quantized (`torchao`, `bitsandbytes`), or None for float weights (a GGUF file loads
    dequantized: float).
    """  # noqa: D205
    from torchao.utils import TorchAOBaseTensor

    for parameter in model.parameters():
        if isinstance(parameter, TorchAOBaseTensor) or isinstance(getattr(parameter, "data", None), TorchAOBaseTensor):
            return "torchao"
        if type(parameter).__name__ in ("Params4bit", "Int8Params"):
            return "bitsandbytes"
    return None


def refuse_quantized(model: nn.Module, key: str, source: str) -> None:
    """One line when `model` is already quantized: quantizing it again would compound the error."""
    already = quantized_with(model)
    if already:
        raise LightFTError(
            f"{key}: '{source}' is already quantized ({already}); quantize the float model it came from "
            "(its checkpoint or merged export)."
        )


def quantize_torchao(model: nn.Module, scheme: QuantScheme, act_qparams: dict[str, Any] | None = None) -> nn.Module:
    """Quantize `model`'s linear layers in place with torchao (`int8_static`: with each layer's calibrated
    activation scale and zero point, `act_qparams[name] = (scale, zero_point)`).
    """  # noqa: D205
    from torchao.quantization import quantize_

    if scheme.scheme != "int8_static":
        quantize_(model, scheme.torchao_config(), filter_fn=scheme.filter_fn)
        return model
    from lightft.quantization.static import quantize_static

    quantize_static(model, scheme, act_qparams or {})
    return model


def quantize_bitsandbytes(float_dir: Path, scheme: QuantScheme, head: str, device: torch.device) -> PreTrainedModel:
    """Load a saved float model quantized by bitsandbytes (NF4 / FP4 / LLM.int8)."""
    config = scheme.bitsandbytes_config(torch.float32 if device.type == "cpu" else torch.bfloat16)
    if scheme.keep_float:
        model = AUTO_CLASSES[head].from_pretrained(float_dir, dtype=torch.float32)
        # bitsandbytes skips modules by name: the full names of the layers `keep_float` matches
        config.llm_int8_skip_modules = [n for n, _ in quantizable_linears(model) if scheme.kept_float(n)] + ["lm_head"]
        del model
    model = AUTO_CLASSES[head].from_pretrained(
        float_dir, quantization_config=config, device_map={"": str(device)}, dtype=torch.float32
    )
    keep_4bit_layout(model)  # the same arithmetic in memory and after a reload (no bf16 CPU repacking)
    return model


def save_float(model: PreTrainedModel, tokenizer: Any, directory: Path) -> None:
    """The float model as a transformers directory (a GGUF-loaded model is copied into a plain one first)."""
    savable(model).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def forget_gguf(model: PreTrainedModel) -> PreTrainedModel:
    """`model` (in place) without the GGUF quantization record transformers keeps on a model loaded from a GGUF file
    (its weights are float), which blocks `save_pretrained`; unlike `savable` it keeps the modules (e.g. a QAT run's
    fake-quantized layers).
    """  # noqa: D205
    if quantized_with(model) is None:
        if getattr(model.config, "quantization_config", None) is not None:
            del model.config.quantization_config
        model.hf_quantizer, model.is_quantized = None, False
    return model


def save_quantized(model: PreTrainedModel, scheme: QuantScheme, directory: Path, record: dict[str, Any]) -> None:
    """Write a quantized model (+ `lightft.json` naming the scheme); torchao models through transformers' torchao
    integration, which flattens torchao's tensors into safetensors with their metadata.
    """  # noqa: D205
    from transformers import TorchAoConfig
    from transformers.quantizers import AutoHfQuantizer

    if scheme.library == "torchao" and not isinstance(
        getattr(model.config, "quantization_config", None), TorchAoConfig
    ):
        # `save_pretrained` flattens torchao tensors only through a torchao quantizer; a model quantized in memory
        # (quantize_, a QAT convert, per-layer static scales) gets the one transformers builds from the same config
        config = TorchAoConfig(scheme.torchao_config())
        model.config.quantization_config = config
        model.hf_quantizer = AutoHfQuantizer.from_config(config, pre_quantized=False)
    model.save_pretrained(directory)
    (directory / RECORD).write_text(json.dumps({**record, "merged": True, "quantization": _plain(scheme)}, indent=2))


def _plain(scheme: QuantScheme) -> dict[str, Any]:
    return {"scheme": scheme.scheme, "mapping": scheme.mapping, "granularity": scheme.resolved_granularity,
            "group_size": scheme.group_size, "bits": scheme.weight_bits, "label": scheme.label()}  # fmt: skip


def scheme_of(directory: str | Path) -> dict[str, Any] | None:
    """The `quantization` record of a `lightft quantize` directory, or None for any other directory."""
    path = Path(directory) / RECORD
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("quantization")


def load_quantized(directory: str | Path, device: str | torch.device = "cpu") -> PreTrainedModel:
    """A `lightft quantize` output directory as a model, in eval mode, on `device`: the one call for every scheme.

    torchao and bitsandbytes schemes load with `from_pretrained`; `int8_static` from torchao's flattened tensors.
    """
    directory = Path(directory)
    record = json.loads((directory / RECORD).read_text())
    head = record.get("head", "causal_lm")
    quantization = record.get("quantization") or {}
    device = torch.device(device)
    if quantization.get("scheme") != "int8_static":
        device_map = {"": str(device)} if quantization.get("scheme") in ("nf4", "fp4", "llm_int8") else None
        model = AUTO_CLASSES[head].from_pretrained(directory, device_map=device_map)
        if device_map is None:
            return model.to(device).eval()
        keep_4bit_layout(model)
        return model.eval()
    return _load_static(directory, head).to(device).eval()


def _load_static(directory: Path, head: str) -> PreTrainedModel:
    from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict

    config = AutoConfig.from_pretrained(directory)
    plain = copy.deepcopy(config)
    del plain.quantization_config
    model = AUTO_CLASSES[head].from_config(plain, dtype=torch.float32)
    tensors: dict[str, torch.Tensor] = {}
    metadata: dict[str, Any] = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            metadata.update(handle.metadata() or {})
            tensors.update({key: handle.get_tensor(key) for key in handle.keys()})  # noqa: SIM118
    state, leftover = unflatten_tensor_state_dict(tensors, metadata)
    if leftover:
        raise LightFTError(f"--model: '{directory}' holds tensors torchao cannot rebuild (e.g. {sorted(leftover)[0]}).")
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = {key for key in missing if key.endswith("lm_head.weight")}
    if set(missing) - tied or unexpected:
        extra = sorted(set(missing) - tied)[:2] + sorted(unexpected)[:2]
        raise LightFTError(f"--model: '{directory}' does not match its config (e.g. {extra}); it is damaged.")
    model.tie_weights()
    return model


def weight_bytes(directory: Path) -> int:
    """Bytes of the weight files in a model directory (safetensors, GGUF or .bin)."""
    return sum(f.stat().st_size for pattern in ("*.safetensors", "*.gguf", "*.bin") for f in directory.glob(pattern))


def stored_dtypes(model: nn.Module) -> dict[str, str]:
    """The dtype each quantizable layer's weight is really stored in (a torchao tensor's `qdata`, a bitsandbytes
    parameter's packed bytes), by layer name: what the tests check is not a float copy.
    """  # noqa: D205
    out = {}
    for name, layer in quantizable_linears(model):
        weight = layer.weight
        data = getattr(weight, "qdata", None)
        out[name] = str((data if data is not None else weight.data).dtype).removeprefix("torch.")
    return out
