"""LightningModules: the training methods, each declaring what it is (`Method`) on its class."""

from lightft.modules.base import LightFTModule
from lightft.modules.method import Method
from lightft.modules.sft import SFTModule

__all__ = ["LightFTModule", "Method", "SFTModule"]
