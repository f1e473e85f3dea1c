"""LightningModules: the training methods."""

from lightft.modules.base import LightFTModule
from lightft.modules.sft import SFTModule

__all__ = ["LightFTModule", "SFTModule"]
