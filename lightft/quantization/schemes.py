"""Quantization schemes by name: what `lightft quantize --scheme`, a module's `qat:` and the GGUF export share.

A scheme quantizes the decoder's linear layers (not the embeddings, the LM head or a reward model's score head, which
every peer keeps in float). The torchao schemes map onto torchao's own configs (`torchao_config`), so `quantize_`,
its QAT `QATConfig(prepare/convert)` and transformers' `TorchAoConfig` all read the same thing:

- `int8_weight_only`, `int4_weight_only`, `intx_weight_only` (`bits` 2..8): `IntxWeightOnlyConfig`; weights stored as
  integers (`IntxUnpackedToInt8Tensor`: one int8 per value, whatever `bits`) with a scale (and zero point when
  `affine`) per tensor, per output channel or per group of `group_size` input features;
- `int8_dynamic`: `Int8DynamicActivationIntxWeightConfig`: activations quantized per token at run time (asymmetric, as
  torchao's QAT requires), weights like `int8_weight_only` (or `bits`-bit);
- `int8_static`: `Int8StaticActivationInt8WeightConfig`: the activations' scale fixed before deployment by a
  calibration pass with an observer (`lightft.quantization.observers`); its `mapping` is the activations' (torchao
  keeps the int8 weights symmetric);
- `nf4`, `fp4`, `llm_int8`: bitsandbytes through transformers' `BitsAndBytesConfig` (4-bit blocks of 64; LLM.int8
  with fp16 outliers), the formats QLoRA trains on.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from lightft.errors import LightFTError

SchemeName = Literal[
    "int8_weight_only", "int4_weight_only", "intx_weight_only", "int8_dynamic", "int8_static", "nf4", "fp4", "llm_int8"
]
Mapping = Literal["symmetric", "affine"]
Granularity = Literal["per_tensor", "per_channel", "per_group"]

TORCHAO_SCHEMES = ("int8_weight_only", "int4_weight_only", "intx_weight_only", "int8_dynamic", "int8_static")
BNB_SCHEMES = ("nf4", "fp4", "llm_int8")
QAT_SCHEMES = ("int8_weight_only", "int4_weight_only", "intx_weight_only", "int8_dynamic")  # torchao's QATConfig
# layers every scheme keeps in float: the LM head (tied to the embeddings in small models) and a reward score head
SKIPPED = ("lm_head", "score", "v_head", "embed_out")


@dataclass(frozen=True)
class QuantScheme:
    """A quantization scheme and its knobs.

    Args:
        scheme: `int8_weight_only`, `int4_weight_only`, `intx_weight_only` (weights only), `int8_dynamic` (int8
            activations per token at run time + integer weights), `int8_static` (activations with a calibrated,
            fixed scale), `nf4` / `fp4` / `llm_int8` (bitsandbytes).
        mapping: `symmetric` (zero point 0: x = S·x_q) or `affine` (x = S·(x_q − Z), the full integer range for
            skewed weights).
        granularity: One scale per tensor, per output channel or per group of `group_size` input features; default
            per_group for 2..4-bit weights, per_channel otherwise.
        group_size: Input features sharing a scale with `per_group`; must divide every quantized layer's input size.
        bits: Weight bits of `intx_weight_only` and `int8_dynamic` (2..8); `int4_weight_only` is 4 and
            `int8_weight_only` 8.
        keep_float: Layers to leave in float, as regular expressions searched in the layer names (e.g.
            `mlp.down_proj`, `layers.11.mlp`): the layers whose inputs carry an LLM's outlier features.
    """

    scheme: SchemeName = "int8_weight_only"
    mapping: Mapping = "symmetric"
    granularity: Granularity | None = None
    group_size: int = 32
    bits: int = 8
    keep_float: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep_float", tuple(self.keep_float))  # a list from a config or the command line
        for pattern in self.keep_float:
            try:
                re.compile(pattern)
            except re.error as err:
                raise LightFTError(f"--keep_float: '{pattern}' is not a regular expression ({err}); fix it.") from err
        if self.scheme not in SchemeName.__args__:  # type: ignore[attr-defined]
            raise LightFTError(
                f"--scheme: unknown scheme '{self.scheme}'; choose one of {', '.join(SchemeName.__args__)}."  # type: ignore[attr-defined]
            )
        if self.mapping not in ("symmetric", "affine"):
            raise LightFTError(f"--mapping: unknown mapping '{self.mapping}'; choose symmetric or affine.")
        if self.granularity not in (None, "per_tensor", "per_channel", "per_group"):
            raise LightFTError(
                f"--granularity: unknown granularity '{self.granularity}'; choose per_tensor, per_channel or per_group."
            )
        if not 2 <= self.weight_bits <= 8:
            raise LightFTError(f"--bits: {self.bits} is not a supported weight width; choose 2..8.")
        if self.group_size < 1:
            raise LightFTError(f"--group_size: {self.group_size} must be a positive number of input features.")
        self._check_granularity()

    def _check_granularity(self) -> None:
        if (
            self.resolved_granularity == "per_tensor"
            and self.library == "torchao"
            and not (
                self.scheme == "int8_static" or (self.scheme == "int8_weight_only" and self.mapping == "symmetric")
            )
        ):
            raise LightFTError(
                "--granularity: torchao takes one scale per tensor only for symmetric int8_weight_only and "
                "int8_static; use per_channel (or per_group)."
            )
        if self.scheme == "int8_static" and self.resolved_granularity == "per_group":
            raise LightFTError("--granularity: int8_static takes per_tensor or per_channel weights, not per_group.")
        if self.scheme == "int8_dynamic" and self.mapping == "affine":
            raise LightFTError(
                "--mapping: int8_dynamic takes symmetric weights (its activations are affine per token); "
                "use --mapping symmetric."
            )

    @property
    def weight_bits(self) -> int:
        """Bits per weight value (bitsandbytes' 4-bit formats: 4; LLM.int8: 8)."""
        if self.scheme in ("int4_weight_only", "nf4", "fp4"):
            return 4
        if self.scheme in ("int8_weight_only", "int8_static", "llm_int8"):
            return 8
        return self.bits

    @property
    def resolved_granularity(self) -> Granularity:
        """The granularity in force: the one given, else per_group under 5 bits and per_channel from 5."""
        if self.granularity is not None:
            return self.granularity
        return "per_group" if self.weight_bits <= 4 else "per_channel"

    @property
    def library(self) -> Literal["torchao", "bitsandbytes"]:
        """Which library quantizes and runs the scheme."""
        return "bitsandbytes" if self.scheme in BNB_SCHEMES else "torchao"

    def label(self) -> str:
        """A short name for reports and tables, e.g. `int4_weight_only/symmetric/per_group(32)`."""
        if self.library == "bitsandbytes":
            return self.scheme
        granularity = self.resolved_granularity
        group = f"({self.group_size})" if granularity == "per_group" else ""
        bits = f"/int{self.weight_bits}" if self.scheme in ("intx_weight_only", "int8_dynamic") else ""
        kept = f", float: {'|'.join(self.keep_float)}" if self.keep_float else ""
        return f"{self.scheme}{bits}/{self.mapping}/{granularity}{group}{kept}"

    def weight_granularity(self) -> Any:
        """Torchao's granularity object for the weights (`PerTensor`, `PerAxis(0)` or `PerGroup(group_size)`)."""
        from torchao.quantization import PerAxis, PerGroup, PerTensor

        granularity = self.resolved_granularity
        if granularity == "per_tensor":
            return PerTensor()
        return PerAxis(0) if granularity == "per_channel" else PerGroup(self.group_size)

    def mapping_type(self) -> Any:
        """Torchao's `MappingType` for the weights."""
        from torchao.quantization.quant_primitives import MappingType

        return MappingType.SYMMETRIC if self.mapping == "symmetric" else MappingType.ASYMMETRIC

    def torchao_config(self, act_scale: torch.Tensor | None = None, act_zero_point: torch.Tensor | None = None) -> Any:
        """The torchao config that quantizes a linear layer with this scheme (`int8_static`: with its activations'
        calibrated `act_scale` / `act_zero_point`).
        """  # noqa: D205
        import torchao.quantization as ao

        if self.library != "torchao":
            raise LightFTError(f"--scheme: {self.scheme} is a bitsandbytes scheme; it has no torchao config.")
        dtype = getattr(torch, f"int{self.weight_bits}")
        if self.scheme == "int8_dynamic":
            return ao.Int8DynamicActivationIntxWeightConfig(
                weight_dtype=dtype,
                weight_granularity=self.weight_granularity(),
                weight_mapping_type=self.mapping_type(),
            )
        if self.scheme == "int8_static":
            from torchao.quantization.quant_primitives import MappingType

            # torchao reads one granularity as the activations' and the weights': the calibrated activation scale is
            # one per tensor, the weights' per tensor or per output channel
            weights = ao.PerTensor() if self.resolved_granularity == "per_tensor" else ao.PerRow()
            granularity = [ao.PerTensor(), weights]
            return ao.Int8StaticActivationInt8WeightConfig(
                act_quant_scale=act_scale,
                act_quant_zero_point=act_zero_point,
                granularity=granularity,
                act_mapping_type=MappingType.SYMMETRIC if act_zero_point is None else MappingType.ASYMMETRIC,
            )
        if self.resolved_granularity == "per_tensor":  # IntxWeightOnlyConfig has a scale per channel or group
            return ao.Int8WeightOnlyConfig(granularity=ao.PerTensor())
        return ao.IntxWeightOnlyConfig(
            weight_dtype=dtype, granularity=self.weight_granularity(), mapping_type=self.mapping_type()
        )

    def bitsandbytes_config(self, compute_dtype: torch.dtype = torch.float32) -> Any:
        """Transformers' `BitsAndBytesConfig` for `nf4`, `fp4` and `llm_int8`."""
        from transformers import BitsAndBytesConfig

        if self.scheme == "llm_int8":
            return BitsAndBytesConfig(load_in_8bit=True)
        if self.scheme in ("nf4", "fp4"):
            return BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type=self.scheme, bnb_4bit_compute_dtype=compute_dtype
            )
        raise LightFTError(f"--scheme: {self.scheme} is a torchao scheme; it has no bitsandbytes config.")

    def layers(self, model: nn.Module) -> list[tuple[str, nn.Linear]]:
        """The linear layers this scheme quantizes: `quantizable_linears` but those `keep_float` names."""
        return [(name, layer) for name, layer in quantizable_linears(model) if not self.kept_float(name)]

    def kept_float(self, name: str) -> bool:
        """Whether `keep_float` leaves the layer `name` in float."""
        return any(re.search(pattern, name) for pattern in self.keep_float)

    def filter_fn(self, module: nn.Module, fqn: str) -> bool:
        """`quantize_`'s `filter_fn`: the layers `layers` yields."""
        return linear_filter(module, fqn) and not self.kept_float(fqn)

    def check(self, model: nn.Module, key: str = "--group_size") -> None:
        """Refuse, in one line naming `key`, a group size that does not divide a quantized layer's input features."""
        if self.keep_float and not self.layers(model):
            raise LightFTError(f"--keep_float: {list(self.keep_float)} matches every layer; nothing left to quantize.")
        if self.library != "torchao" or self.resolved_granularity != "per_group":
            return
        for name, layer in self.layers(model):
            if layer.in_features % self.group_size:
                divisors = [g for g in (256, 128, 64, 32, 16, 8) if layer.in_features % g == 0]
                hint = f" such as {divisors[0]}" if divisors else ""
                other = f"{key.removesuffix('group_size')}granularity" + (" " if key.startswith("--") else ": ")
                raise LightFTError(
                    f"{key}: {self.group_size} does not divide {name}'s {layer.in_features} input features; choose "
                    f"a group size that does{hint}, or {other}per_channel."
                )


def quantizable_linears(model: nn.Module) -> Iterator[tuple[str, nn.Linear]]:
    """The linear layers a scheme quantizes: every `nn.Linear` but the output heads (`SKIPPED`) and PEFT adapters."""
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        parts = name.split(".")
        if any(part in SKIPPED for part in parts) or any(part.startswith("lora_") for part in parts):
            continue
        yield name, module


def linear_filter(module: nn.Module, fqn: str) -> bool:
    """`quantize_`'s `filter_fn`: the layers `quantizable_linears` yields."""
    parts = fqn.split(".")
    return (
        isinstance(module, nn.Linear)
        and not any(part in SKIPPED for part in parts)
        and not any(part.startswith("lora_") for part in parts)
    )
