"""Full fine-tuning: every weight trains, a checkpoint holds the whole model.

There is no adapter to disable: methods that need a reference model (DPO, PPO) keep a frozen copy instead.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import BitsAndBytesConfig, PreTrainedModel

from lightft.errors import LightFTError


class FullFineTune:
    """Train all parameters of the model (no quantization, no adapter)."""

    prompt_style = False
    supports_gradient_checkpointing = True
    mergeable = True

    def quantization_config(self, compute_dtype: torch.dtype) -> BitsAndBytesConfig | None:
        """Full fine-tuning loads the base unquantized."""
        return None

    def check(self, model: nn.Module) -> None:
        """Any model can be fully fine-tuned."""

    def apply(self, model: PreTrainedModel) -> nn.Module:
        """Unfreeze every parameter."""
        model.requires_grad_(True)
        return model

    def disabled(self, model: nn.Module) -> AbstractContextManager[None]:
        """Not available: a fully fine-tuned model has no separable adapter."""
        raise LightFTError(
            "FullFineTune has no adapter to disable; use a frozen reference copy or a PEFT strategy "
            "(model.init_args.peft)."
        )

    def trainable_state_dict(self, model: nn.Module) -> dict[str, Tensor]:
        """The whole state dict."""
        return model.state_dict()

    def merge(self, model: nn.Module) -> PreTrainedModel:
        """Nothing to merge: the model is already whole."""
        return model  # type: ignore[return-value]

    def save(self, model: nn.Module, directory: Path) -> None:
        """A full transformers checkpoint (safetensors)."""
        model.save_pretrained(directory)  # type: ignore[operator]

    def load(self, model: PreTrainedModel, directory: Path) -> nn.Module:
        """The saved checkpoint replaces the base entirely, as a model of the base's own class (a causal LM, or a
        reward model's `*ForSequenceClassification`).
        """  # noqa: D205
        return type(model).from_pretrained(directory, dtype=model.dtype)
