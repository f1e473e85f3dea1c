"""PEFT strategies: how a pretrained model becomes trainable (see `PEFTStrategy`)."""

from lightft.peft.base import PEFTStrategy, capability, count_parameters, state_dict_bytes
from lightft.peft.bottleneck import BottleneckAdapter
from lightft.peft.full import FullFineTune
from lightft.peft.ia3 import IA3
from lightft.peft.lora import LoRA, LoRA8bit, QLoRA
from lightft.peft.prompt import PrefixTuning, PromptTuning, PTuning
from lightft.peft.targets import linear_module_names, resolve_targets

__all__ = [
    "IA3",
    "BottleneckAdapter",
    "FullFineTune",
    "LoRA",
    "LoRA8bit",
    "PEFTStrategy",
    "PTuning",
    "PrefixTuning",
    "PromptTuning",
    "QLoRA",
    "capability",
    "count_parameters",
    "linear_module_names",
    "resolve_targets",
    "state_dict_bytes",
]
