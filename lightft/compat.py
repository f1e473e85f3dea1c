"""Config-time compatibility checks: combinations that cannot work fail before any weight is loaded.

Run by the CLI right after the config is parsed (before data is tokenized) and again by `LightFTModule.setup` for
runs built in Python. Each error names the key to change. The PEFT strategy's own `check` runs on a meta-device
copy of the model (all modules and shapes, no weights), so target modules are validated in milliseconds.
"""

from __future__ import annotations

from typing import Any

from lightft.errors import LightFTError
from lightft.models.loading import meta_model
from lightft.peft.base import capability


def check_compatibility(module: Any, datamodule: Any = None) -> None:
    """Raise `LightFTError` for a method x PEFT x data x checkpointing combination that cannot train."""
    peft = module.peft
    name = type(peft).__name__
    check_data = getattr(module, "check_datamodule", None)
    if check_data is not None:
        check_data(datamodule)
    if getattr(datamodule, "packing", False) and capability(peft, "prompt_style"):
        raise LightFTError(
            f"data.init_args.packing: {name} prepends virtual tokens, which packed rows (positions restarting per "
            "document) cannot carry; set packing: false or use a LoRA-family strategy."
        )
    if module.gradient_checkpointing and not capability(peft, "supports_gradient_checkpointing"):
        raise LightFTError(
            f"model.init_args.gradient_checkpointing: {name} does not work with activation checkpointing; set "
            "gradient_checkpointing: false."
        )
    check = getattr(peft, "check", None)
    if check is not None:
        head = getattr(module, "model_head", "causal_lm")
        check(meta_model(module.model_spec, key="model.init_args.model.path", head=head))
