"""Which layers an adapter targets: `all-linear`, per-architecture presets, module names, or a regular expression.

Presets name the attention and MLP projections of each architecture family (Llama/Mistral/Qwen/Gemma/Phi-3 share
Llama's names; GPT-2 and GPT-NeoX have their own), so `target_modules: attention` means the same thing everywhere.
Checks run on a weightless meta-device model at config time: a target that matches nothing is an error that lists
the names that would match.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence

from torch import nn
from transformers.pytorch_utils import Conv1D

from lightft.errors import LightFTError

TARGET_KEY = "model.init_args.peft.init_args.target_modules"
LLAMA_LIKE = {
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mlp": ["gate_proj", "up_proj", "down_proj"],
}
PRESETS: dict[str, dict[str, list[str]]] = {
    **dict.fromkeys(
        ["llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo2"],
        LLAMA_LIKE,
    ),
    "phi3": {"attention": ["qkv_proj", "o_proj"], "mlp": ["gate_up_proj", "down_proj"]},
    "gpt2": {"attention": ["attn.c_attn", "attn.c_proj"], "mlp": ["mlp.c_fc", "mlp.c_proj"]},
    "gpt_neox": {"attention": ["query_key_value", "attention.dense"], "mlp": ["dense_h_to_4h", "dense_4h_to_h"]},
}
PRESET_NAMES = ("attention", "mlp", "attention+mlp")


def linear_types() -> tuple[type[nn.Module], ...]:
    """Layer types that adapters can target: Linear, GPT-2's Conv1D, and bitsandbytes' quantized linears."""
    types: tuple[type[nn.Module], ...] = (nn.Linear, Conv1D)
    bnb = sys.modules.get("bitsandbytes")  # imported by transformers/peft when a model is quantized
    if bnb is not None:
        types += (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    return types


def linear_names(model: nn.Module) -> list[str]:
    """Full names of every linear layer of `model`."""
    return [name for name, module in model.named_modules() if isinstance(module, linear_types())]


def linear_module_names(model: nn.Module) -> list[str]:
    """Leaf names (e.g. `q_proj`) of every linear layer, the names `target_modules` may use."""
    return sorted({name.rsplit(".", 1)[-1] for name in linear_names(model)})


def preset(model: nn.Module, name: str, key: str = TARGET_KEY) -> list[str]:
    """Module names of preset `name` (`attention`, `mlp`, `attention+mlp`) for `model`'s architecture."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in PRESETS:
        raise LightFTError(
            f"{key}: no '{name}' preset for model type '{model_type}' (presets exist for {sorted(PRESETS)}); list the "
            f"modules instead, from: {', '.join(linear_module_names(model))}."
        )
    return [m for part in name.split("+") for m in PRESETS[model_type][part]]


def resolve_targets(model: nn.Module, targets: str | Sequence[str], key: str = TARGET_KEY) -> str | list[str]:
    """Expand presets; check that every target matches a linear layer. Returns what peft takes.

    Args:
        model: The model to adapt (real or on the meta device).
        targets: `all-linear`; a preset (`attention`, `mlp`, `attention+mlp`); a list of module names (exact or
            suffix match, peft's rule for a list); or a regular expression over full module names (peft's rule for
            a string).
        key: Config key named in errors.
    """
    if isinstance(targets, str) and targets in PRESET_NAMES:
        targets = preset(model, targets, key)
    linear = linear_names(model)
    available = ", ".join(linear_module_names(model))
    if targets == "all-linear":
        if not linear:
            raise LightFTError(f"{key}: 'all-linear' found no linear layer in {type(model).__name__}.")
        return targets
    if isinstance(targets, str):
        if not any(re.fullmatch(targets, name) for name in linear):
            raise LightFTError(f"{key}: pattern '{targets}' matches no linear layer; linear layers are: {available}.")
        return targets
    missing = [t for t in targets if not any(name == t or name.endswith("." + t) for name in linear)]
    if missing:
        owner = type(model).__name__
        raise LightFTError(f"{key}: {missing} match no linear layer of {owner}; use any of: {available}.")
    return list(targets)
