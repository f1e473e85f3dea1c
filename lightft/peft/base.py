"""The PEFT strategy protocol and the helpers every strategy shares.

A strategy answers: how is the model loaded (quantization), can it wrap this model (`check`, run at config time on a
weightless meta-device copy), how is it made trainable, how is the base model recovered (`disabled`), what does a
checkpoint store, and how is the result saved, loaded back and merged. Three class attributes declare what the
method is compatible with (read with defaults, so your own strategy may omit them):

- `prompt_style`: adds virtual tokens to the input (incompatible with packing, whose position resets it breaks);
- `supports_gradient_checkpointing`;
- `mergeable`: `merge` folds the trained weights into the base (otherwise it raises).

Write your own by implementing `PEFTStrategy` and naming the class by `class_path` in YAML (docs/extending.md).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from transformers import BitsAndBytesConfig, PreTrainedModel


@runtime_checkable
class PEFTStrategy(Protocol):
    """How a pretrained model becomes trainable, and how that is undone, saved and merged."""

    def quantization_config(self, compute_dtype: torch.dtype) -> BitsAndBytesConfig | None:
        """How to quantize the base while loading it (None: load as is)."""

    def check(self, model: nn.Module) -> None:
        """Raise `LightFTError` if this strategy cannot be applied to `model` (may be on the meta device)."""

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


def capability(strategy: object, name: str) -> bool:
    """A strategy's declared capability (`prompt_style` defaults to False, the others to True)."""
    return bool(getattr(strategy, name, name != "prompt_style"))


def logical_numel(param: Tensor) -> int:
    """Elements of a parameter as the model uses it: a ZeRO-3 partition's whole (`ds_numel`), and for bitsandbytes'
    packed 4-bit weights (`Params4bit`) the shape kept in their quantization state. Their storage holds two 4-bit
    values per byte, so its element count depends on the storage dtype: a 64 x 64 weight is 2,048 uint8 elements
    but 1,024 bfloat16 ones (`quant_storage: bfloat16`, the FSDP QLoRA setting). Before quantization (no state yet)
    a `Params4bit` still holds the unpacked weight.
    """  # noqa: D205
    ds_numel = getattr(param, "ds_numel", None)
    if ds_numel:
        return int(ds_numel)
    state = getattr(param, "quant_state", None) if type(param).__name__ == "Params4bit" else None
    if state is not None:
        return int(torch.Size(state.shape).numel())
    return param.numel()


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts at their logical size (`logical_numel`): 4-bit weights count every
    value whatever dtype packs them, ZeRO-3 partitions count the whole.
    """  # noqa: D205
    trainable = total = 0
    for param in model.parameters():
        n = logical_numel(param)
        total += n
        trainable += n if param.requires_grad else 0
    return trainable, total


def state_dict_bytes(state: dict[str, Tensor]) -> int:
    """Bytes of a state dict's tensors as safetensors stores them (tied weights once), less a header of a few kB."""
    unique = {(t.data_ptr(), tuple(t.shape), t.dtype): t for t in state.values()}
    return sum(t.numel() * t.element_size() for t in unique.values())


def apply_seeded(peft: Any, base: nn.Module) -> nn.Module:
    """`peft.apply(base)` with the random state the run was seeded with (`seed_everything`), restored afterwards.

    New weights (LoRA's A, prompt embeddings, ...) start the same whatever building the base consumed (a loaded or
    random base, ZeRO-3's partitioned construction), so every strategy trains the same initial adapter.
    """
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(torch.initial_seed())
        return peft.apply(base)


def peft_summary(peft: Any, model: nn.Module) -> dict[str, float]:
    """Trainable and total parameters and the size of what the strategy saves (MB, safetensors)."""
    trainable, total = count_parameters(model)
    return {
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": 100 * trainable / max(1, total),
        "adapter_mb": state_dict_bytes(peft.trainable_state_dict(model)) / 1e6,
    }
