"""Quantization-aware training (a training module's `qat:`) on torchao's QAT: `QATConfig(base_config, step=...)`.

`prepare` swaps the linear layers a scheme quantizes (`schemes.linear_filter`: not the output heads, not PEFT
adapters) for torchao's `FakeQuantizedLinear`, an `nn.Linear` whose forward rounds its weight to the scheme's integer
grid and back (and, for `int8_dynamic`, its input to int8 per token), with straight-through gradients. A module
calls it on the loaded base before the PEFT strategy wraps it (`LightFTModule.build_model`), as torchtune's LoRA+QAT
does: LoRA's adapters stay float around a fake-quantized frozen base weight; with full fine-tuning every quantizable
weight trains through its fake quantizer; prompt-style and bottleneck strategies train float additions around a
fake-quantized base.

`convert` is the real quantization after training, with the same torchao config a post-training quantization
(`lightft quantize`) of the same float weights uses: it swaps every `FakeQuantizedLinear` back to `nn.Linear` and
quantizes it. To export one model, merge the adapter first (`peft.merge(model)`: the base layers that peft hands
back are the fake-quantized ones), then `convert`; the result equals `quantize_(merged_float_model,
scheme.torchao_config(), filter_fn=scheme.filter_fn)` exactly. Converting an unmerged model quantizes the base and
leaves the adapter float, which is what training simulated (strategies that cannot merge: prompt tuning, the
bottleneck adapter). LoRA training simulates Q(W) x + B A x while the merged export computes Q(W + B A) x: the
adapter is not trained through the quantizer (torchtune's recipe has the same gap; full fine-tuning has none).

State: with the configs torchao infers from lightft's schemes, the fake quantizers keep no state. Their scales and
zero points are recomputed from the current weight at every forward (torchao's `is_dynamic=True`; range learning,
which would make them parameters, is not exposed), stored as plain attributes, not buffers or parameters, so a
fake-quantized model has exactly the state dict of the float one: checkpoints and exact resume are unchanged
(tests/quantization/test_qat.py resumes a QAT run bit-identically). A float artefact of a QAT run (an adapter, a
merged float model) computes what the model does under `float_forward`, not what it trained as.

Cost: each fake-quantized layer keeps its fake-quantized weight for the backward pass (about one extra copy of the
quantized weights in the compute dtype with LoRA, two with full fine-tuning) and, with `int8_dynamic`, a quantized
copy of its input; gradient checkpointing bounds both to one decoder layer. DoRA with dropout computes its dropped
branch from the float base weight (peft), so only LoRA's undropped path sees the quantized one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from lightft.errors import LightFTError
from lightft.quantization.schemes import QAT_SCHEMES, QuantScheme, linear_filter

KEY = "model.init_args.qat"


def check(scheme: QuantScheme, peft: Any, key: str = KEY, model: nn.Module | None = None) -> None:
    """Config-time refusals of a `qat:` setting, each a `LightFTError` naming `key` and the fix.

    Args:
        scheme: The QAT scheme (the one the trained model will be exported with).
        peft: The module's PEFT strategy: one that loads a quantized base (QLoRA, LoRA8bit) is refused.
        key: The config key named in the messages.
        model: The (meta-device) base model, to check that the group size divides every quantized layer.
    """
    if scheme.scheme not in QAT_SCHEMES:
        hint = f"quantize after training (lightft quantize --scheme {scheme.scheme})"
        if scheme.library == "bitsandbytes":
            strategy = "LoRA8bit" if scheme.scheme == "llm_int8" else "QLoRA"
            hint = f"train with lightft.peft.{strategy} over a {scheme.scheme} base (a bitsandbytes format)"
        raise LightFTError(
            f"{key}.scheme: torchao cannot fake-quantize {scheme.scheme}; choose one of {', '.join(QAT_SCHEMES)}, "
            f"or {hint}."
        )
    if scheme.mapping != "symmetric":
        raise LightFTError(
            f"{key}.mapping: torchao's QAT fake-quantizes symmetric weights only; set mapping: symmetric."
        )
    if scheme.resolved_granularity == "per_tensor":
        raise LightFTError(
            f"{key}.granularity: torchao's QAT fake-quantizes per_channel or per_group weights, not per_tensor; set "
            "granularity: per_channel."
        )
    quantization = peft.quantization_config(torch.float32) if hasattr(peft, "quantization_config") else None
    if quantization is not None:
        raise LightFTError(
            f"{key}: {type(peft).__name__} trains over a bitsandbytes-quantized base, but fake quantization needs "
            "the float weights; use LoRA (model.init_args.peft.class_path: lightft.peft.LoRA)."
        )
    if model is not None:
        scheme.check(model, key=f"{key}.group_size")


def prepare(model: nn.Module, scheme: QuantScheme, key: str = KEY) -> nn.Module:
    """Fake-quantize, in place, the linear layers `scheme` quantizes (`quantizable_linears`); returns `model`.

    On a loaded base before PEFT wraps it (how `LightFTModule` calls it), or on a PEFT-wrapped model (LoRA's and IA3's
    `base_layer`s are swapped, their adapters are not). Layers already fake-quantized are left alone. No weight is
    copied or initialised: each `FakeQuantizedLinear` takes over the layer's own parameters.

    Raises:
        LightFTError: a layer's weight is not float (a bitsandbytes or torchao quantized base), the group size does
            not divide a layer, or the model has no `nn.Linear` to fake-quantize (GPT-2's `Conv1D` layers).
    """
    from torchao.quantization import quantize_
    from torchao.quantization.qat import FakeQuantizedLinear, QATConfig
    from transformers.initialization import no_init_weights

    layers = [(n, m) for n, m in scheme.layers(model) if not isinstance(m, FakeQuantizedLinear)]
    for name, layer in layers:
        if type(layer.weight) is not nn.Parameter or not layer.weight.is_floating_point():
            raise LightFTError(
                f"{key}: {name} holds quantized weights ({type(layer.weight).__name__}, {layer.weight.dtype}); "
                "fake quantization needs the float weights; use LoRA on an unquantized base."
            )
    scheme.check(model, key=f"{key}.group_size")
    if not layers and not fake_quantized(model):
        raise LightFTError(
            f"{key}: {type(model).__name__} has no nn.Linear layer that {scheme.label()} quantizes (GPT-2-style "
            "Conv1D layers are not linears to torchao), so QAT would train the float model; remove qat."
        )
    names = {name for name, _ in layers}
    # FakeQuantizedLinear's constructor builds (and randomly initialises) a weight that `from_linear` then replaces
    # with the layer's own: skip that initialisation (time, and the global random stream a run was seeded with).
    with no_init_weights():
        quantize_(model, QATConfig(scheme.torchao_config(), step="prepare"), filter_fn=lambda _, fqn: fqn in names)
    return model


def convert(model: nn.Module, scheme: QuantScheme, key: str = KEY) -> nn.Module:
    """Quantize, in place, every fake-quantized layer with `scheme` (torchao's QAT convert step); returns `model`.

    Merge an adapter first (`peft.merge(model)`) to export one quantized model; see the module docstring. The result
    is what `quantize_(model, scheme.torchao_config(), filter_fn=scheme.filter_fn)` gives for the same float weights.

    Raises:
        LightFTError: `model` has no fake-quantized layer (it was not prepared: quantize it post-training instead).
    """
    from torchao.quantization import quantize_
    from torchao.quantization.qat import FakeQuantizedLinear, QATConfig

    if not fake_quantized(model):
        raise LightFTError(
            f"{key}: {type(model).__name__} has no fake-quantized layer to convert (it was not trained with qat); "
            f"quantize it post-training instead (lightft quantize --scheme {scheme.scheme})."
        )
    config = QATConfig(scheme.torchao_config(), step="convert")
    quantize_(model, config, filter_fn=lambda module, _: isinstance(module, FakeQuantizedLinear))
    return model


@contextmanager
def float_forward(model: nn.Module) -> Iterator[None]:
    """Inside: the fake-quantized layers compute with their float weights and inputs, as an unprepared model does
    (e.g. to compare a float export of a QAT run with the model it came from).
    """  # noqa: D205
    from torchao.quantization.qat import FakeQuantizedLinear

    quantizers = [
        quantizer
        for module in model.modules()
        if isinstance(module, FakeQuantizedLinear)
        for quantizer in (module.activation_fake_quantizer, module.weight_fake_quantizer)
        if quantizer is not None
    ]
    enabled = [quantizer.enabled for quantizer in quantizers]
    for quantizer in quantizers:
        quantizer.enabled = False
    try:
        yield
    finally:
        for quantizer, state in zip(quantizers, enabled, strict=True):
            quantizer.enabled = state


def fake_quantized(model: nn.Module) -> list[str]:
    """Names of `model`'s fake-quantized linear layers."""
    from torchao.quantization.qat import FakeQuantizedLinear

    return [name for name, module in model.named_modules() if isinstance(module, FakeQuantizedLinear)]


__all__ = ["KEY", "check", "convert", "fake_quantized", "float_forward", "linear_filter", "prepare"]
