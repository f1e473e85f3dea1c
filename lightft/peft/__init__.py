"""PEFT strategies: how a pretrained model becomes trainable (see `PEFTStrategy`)."""

from lightft.peft.base import PEFTStrategy, check_target_modules, count_parameters, linear_module_names
from lightft.peft.full import FullFineTune
from lightft.peft.lora import LoRA, QLoRA

__all__ = [
    "FullFineTune",
    "LoRA",
    "PEFTStrategy",
    "QLoRA",
    "check_target_modules",
    "count_parameters",
    "linear_module_names",
]
