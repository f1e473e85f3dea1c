"""Static int8 post-training quantization: calibrate each linear layer's activation range, then quantize with it.

`calibrate` runs the float model over a few validation examples with a forward pre-hook on every layer
`quantizable_linears` names; each hook feeds the layer's input at the real tokens (attention mask 1, so padding
never widens a range) to that layer's observer (`lightft.quantization.observers`). The result is, per layer, the
activation scale (shape (1, 1, 1): torchao's static scale has one dimension per activation dimension, and a
decoder's linear layers see [batch, sequence, features]) and zero point (int8, (1, 1, 1); `None` when symmetric).
`quantize_static` then applies `Int8StaticActivationInt8WeightConfig` layer by layer with torchao's `quantize_`:
int8 weights (per tensor or per output channel) and activations quantized with the fixed scale at run time.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from lightft.errors import LightFTError
from lightft.quantization.observers import Calibration, Observer, make_observer
from lightft.quantization.schemes import QuantScheme

log = logging.getLogger(__name__)

QParams = dict[str, tuple[torch.Tensor, torch.Tensor | None]]


class _Mask:
    """The real-token mask of the batch in flight, shared by the hooks (None: every token is real)."""

    value: torch.Tensor | None = None


def real_tokens(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The rows of a layer input `x` at real tokens: `x[mask]` for [batch, sequence, ...] inputs, the same on
    flattened [batch·sequence, features] ones; all of `x` when its shape does not follow the batch's tokens
    (a layer that sees something else than one row per token, e.g. routed experts, is observed whole).
    """  # noqa: D205
    if mask is None:
        return x
    if x.shape[: mask.dim()] == mask.shape:
        return x[mask]
    if x.dim() == 2 and x.shape[0] == mask.numel():
        return x[mask.flatten()]
    return x


def _observe_hook(observer: Observer, mask: _Mask) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        x = args[0] if args else kwargs.get("input")
        if isinstance(x, torch.Tensor):
            observer.forward(real_tokens(x, mask.value))

    return hook


def _field(batch: Any, name: str) -> Any:
    if isinstance(batch, Mapping):
        return batch.get(name)
    return getattr(batch, name, None)


def _inputs(batch: Any, take: int, device: torch.device, key: str) -> tuple[dict[str, torch.Tensor], int]:
    """The model's keyword inputs for the first `take` rows of a batch, and how many rows that is."""
    input_ids = _field(batch, "input_ids")
    if not isinstance(input_ids, torch.Tensor):
        raise LightFTError(f"{key}: a calibration batch has no input_ids tensor; give token batches (input_ids, "
                           "attention_mask) of the calibration split.")  # fmt: skip
    rows = min(take, input_ids.shape[0])
    inputs = {"input_ids": input_ids[:rows].to(device)}
    for name in ("attention_mask", "position_ids"):
        value = _field(batch, name)
        if isinstance(value, torch.Tensor):
            inputs[name] = value[:rows].to(device)
    return inputs, rows


@torch.no_grad()
def _run(model: nn.Module, batches: Iterable[Any], limit: int, mask: _Mask, key: str) -> tuple[int, int]:
    """Run `model` over the batches until `limit` examples; returns (examples, real tokens) seen."""
    device = next(model.parameters()).device
    examples = tokens = 0
    for batch in batches:
        inputs, rows = _inputs(batch, limit - examples, device, key)
        attention = inputs.get("attention_mask")
        mask.value = None if attention is None else attention.bool()
        tokens += int(mask.value.sum()) if mask.value is not None else inputs["input_ids"].numel()
        model(**inputs)
        examples += rows
        if examples >= limit:
            break
    return examples, tokens


def calibrate(
    model: nn.Module,
    batches: Iterable[Any],
    calibration: Calibration,
    scheme: QuantScheme,
    key: str = "--calibration.examples",
) -> QParams:
    """Measure each quantizable linear layer's input range on calibration batches and turn it into int8 parameters.

    The model runs in eval mode without gradients (its mode is restored after), over `batches` until
    `calibration.examples` examples (a batch that crosses the limit is cut); the hooks observe only real tokens and
    are removed whatever happens. A layer the batches never reach is left out of the result (and stays float in
    `quantize_static`), with a warning.

    Args:
        model: The float model (its linear layers as `quantizable_linears` finds them).
        batches: Token batches: dicts or objects with `input_ids` [batch, sequence] and `attention_mask` (1 at real
            tokens; without one every token counts), optionally `position_ids`.
        calibration: The observer and the number of examples.
        scheme: An `int8_static` scheme; its `mapping` makes the activations symmetric or affine.
        key: The config key of the calibration split, named in error messages.

    Returns:
        Per layer name: the activation scale (float32, (1, 1, 1)) and zero point (int8, (1, 1, 1); None when
        symmetric), on the layer's device.

    Raises:
        LightFTError: The scheme is not int8_static, or the batches hold no examples or no real tokens.
    """
    if scheme.scheme != "int8_static":
        raise LightFTError(f"--scheme: calibration measures int8_static's activation ranges; {scheme.scheme} "
                           "quantizes activations at run time (or not at all), so drop the calibration.")  # fmt: skip
    symmetric = scheme.mapping == "symmetric"
    layers = dict(scheme.layers(model))
    observers = {name: make_observer(calibration, symmetric) for name in layers}
    mask = _Mask()
    handles = [
        layer.register_forward_pre_hook(_observe_hook(observers[name], mask), with_kwargs=True)
        for name, layer in layers.items()
    ]
    training = model.training
    try:
        model.eval()
        examples, tokens = _run(model, batches, calibration.examples, mask, key)
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)
    if not examples:
        raise LightFTError(f"{key}: the calibration split holds no examples; int8_static needs some to measure "
                           "activation ranges; give a split with examples or choose another scheme.")  # fmt: skip
    if not tokens:
        raise LightFTError(f"{key}: the calibration examples hold no real tokens (attention_mask is all 0); give "
                           "examples with text.")  # fmt: skip
    unseen = [name for name, observer in observers.items() if not observer.numel]
    if unseen:
        log.warning("calibration never reached %d layer(s) (e.g. %s); they stay in float", len(unseen), unseen[0])
    return {name: _layer_qparams(observer, layers[name]) for name, observer in observers.items() if observer.numel}


def _layer_qparams(observer: Observer, layer: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    scale, zero_point = observer.qparams()
    device = layer.weight.device
    scale = scale.to(device=device, dtype=torch.float32).reshape(1, 1, 1)
    if observer.symmetric:
        return scale, None
    return scale, zero_point.to(device=device, dtype=torch.int8).reshape(1, 1, 1)


def static_config(scheme: QuantScheme, scale: torch.Tensor, zero_point: torch.Tensor | None) -> Any:
    """`scheme.torchao_config(scale, zero_point)` with its activations per tensor.

    torchao reads a single granularity as both the activations' and the weights', and a per-row (per-token)
    activation granularity expects a scale per token, not the one calibrated scale; so per-channel weights get
    `[PerTensor(), PerRow()]` (activations per tensor, weights per output channel).
    """
    from torchao.quantization import PerTensor

    config = scheme.torchao_config(scale, zero_point)
    granularity = config.granularity
    if isinstance(granularity, (list, tuple)):
        if isinstance(granularity[0], PerTensor):
            return config
        granularity = granularity[1]
    if isinstance(granularity, PerTensor):
        return config
    return dataclasses.replace(config, granularity=[PerTensor(), granularity])


def quantize_static(model: nn.Module, scheme: QuantScheme, qparams: QParams) -> nn.Module:
    """Quantize, in place, every quantizable linear layer `qparams` holds with `int8_static` and its own calibrated
    activation scale and zero point (layers without an entry stay float); returns `model`.
    """  # noqa: D205
    from torchao.quantization import quantize_

    if scheme.scheme != "int8_static":
        raise LightFTError(f"--scheme: quantize_static applies int8_static, not {scheme.scheme}.")
    if not qparams:
        raise LightFTError("--calibration: int8_static needs calibrated activation ranges; none were measured.")
    for name, layer in scheme.layers(model):
        if name in qparams:
            scale, zero_point = qparams[name]
            quantize_(layer, static_config(scheme, scale, zero_point), filter_fn=lambda module, fqn: True)
    return model
