"""The PEFT strategy protocol and the helpers every strategy shares.

A strategy answers: how is the model loaded (quantization), how is it made trainable, how is the base model
recovered (`disabled`), what does a checkpoint store, and how is the result saved, loaded back and merged.
Write your own by implementing `PEFTStrategy` and naming the class by `class_path` in YAML (docs/extending.md).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from transformers import BitsAndBytesConfig, PreTrainedModel

from lightft.errors import LightFTError

TARGET_KEY = "model.init_args.peft.init_args.target_modules"


@runtime_checkable
class PEFTStrategy(Protocol):
    """How a pretrained model becomes trainable, and how that is undone, saved and merged."""

    def quantization_config(self, compute_dtype: torch.dtype) -> BitsAndBytesConfig | None:
        """How to quantize the base while loading it (None: load as is)."""

    def apply(self, model: PreTrainedModel) -> nn.Module:
        """Inject the trainable parts and freeze the rest; returns the model to train."""

    def disabled(self, model: nn.Module) -> AbstractContextManager[None]:
        """Context in which `model` computes the base model's forward (reference model for DPO/PPO)."""

    def trainable_state_dict(self, model: nn.Module) -> dict[str, Tensor]:
        """The weights this strategy trains, keyed as in its saved format."""

    def merge(self, model: nn.Module) -> PreTrainedModel:
        """Fold the trained weights into the base model, where that is mathematically defined."""

    def save(self, model: nn.Module, directory: Path) -> None:
        """Write the trained weights to `directory` in the strategy's format (safetensors)."""

    def load(self, model: PreTrainedModel, directory: Path) -> nn.Module:
        """Apply weights written by `save` to a freshly loaded base model."""


def linear_types() -> tuple[type[nn.Module], ...]:
    """Layer types that adapters can target: torch Linear, plus bitsandbytes' quantized linears once loaded."""
    bnb = sys.modules.get("bitsandbytes")  # imported by transformers when a model is quantized
    if bnb is None:
        return (nn.Linear,)
    return (nn.Linear, bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)


def linear_module_names(model: nn.Module) -> list[str]:
    """Leaf names (e.g. `q_proj`) of every linear layer, the names `target_modules` may use."""
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, linear_types())}
    return sorted(names)


def check_target_modules(model: nn.Module, targets: str | Sequence[str], key: str = TARGET_KEY) -> None:
    """Fail with the list of valid names when a target matches no linear layer of `model`.

    Args:
        model: The model the strategy will be applied to.
        targets: `all-linear`, a regular expression matched against full module names (peft's rule for a string),
            or a list of module names (exact or suffix match, peft's rule for a list).
        key: Config key named in the error.
    """
    linear = [name for name, module in model.named_modules() if isinstance(module, linear_types())]
    available = ", ".join(linear_module_names(model))
    if targets == "all-linear":
        if not linear:
            raise LightFTError(f"{key}: 'all-linear' found no linear layer in {type(model).__name__}.")
        return
    if isinstance(targets, str):
        if not any(re.fullmatch(targets, name) for name in linear):
            raise LightFTError(f"{key}: pattern '{targets}' matches no linear layer; linear layers are: {available}.")
        return
    missing = [t for t in targets if not any(name == t or name.endswith("." + t) for name in linear)]
    if missing:
        raise LightFTError(
            f"{key}: {missing} match no linear layer of {type(model).__name__}; use any of: {available}."
        )


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights count their logical size."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel()
        if param.__class__.__name__ == "Params4bit":
            n *= 2  # two 4-bit values per stored byte
        total += n
        trainable += n if param.requires_grad else 0
    return trainable, total
