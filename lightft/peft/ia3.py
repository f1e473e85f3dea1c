"""(IA)^3 through `peft`: learned vectors that rescale activations.

Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning".
For attention targets y = l * (W x) (keys and values are rescaled); for feed-forward targets the input is rescaled,
y = W (l * x). The vectors start at 1 (the base model) and merge exactly into W.
"""

from __future__ import annotations

from peft import IA3Config
from peft.utils import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING
from torch import nn

from lightft.errors import LightFTError
from lightft.peft.library import PeftLibraryStrategy
from lightft.peft.targets import resolve_targets

KEY = "model.init_args.peft.init_args"


class IA3(PeftLibraryStrategy):
    """Infused adapters by inhibiting and amplifying inner activations (peft `IA3Config`).

    Args:
        target_modules: `auto` (peft's choice per architecture: keys, values and the MLP down projection), a preset,
            a list of module names, or a regular expression.
        feedforward_modules: Which targets are feed-forward layers (their input is rescaled instead of their
            output); must be a subset of the targets. With `auto` targets, peft's per-architecture default.
    """

    def __init__(self, target_modules: str | list[str] = "auto", feedforward_modules: list[str] | None = None) -> None:
        self.target_modules, self.feedforward_modules = target_modules, feedforward_modules

    def peft_config(self, model: nn.Module) -> IA3Config:
        """The equivalent `peft.IA3Config`, targets resolved against `model`."""
        if self.target_modules == "auto":
            model_type = getattr(getattr(model, "config", None), "model_type", None)
            if model_type not in TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING:
                raise LightFTError(
                    f"{KEY}.target_modules: peft has no IA3 default for model type '{model_type}'; list the target "
                    "and feedforward modules."
                )
            return IA3Config(task_type="CAUSAL_LM", feedforward_modules=self.feedforward_modules)
        targets = resolve_targets(model, self.target_modules)
        feedforward = self.feedforward_modules or []
        if isinstance(targets, list) and not set(feedforward) <= set(targets):
            raise LightFTError(
                f"{KEY}.feedforward_modules: {sorted(set(feedforward) - set(targets))} are not among the "
                f"target_modules {targets}; add them there or remove them here."
            )
        return IA3Config(task_type="CAUSAL_LM", target_modules=targets, feedforward_modules=feedforward)
