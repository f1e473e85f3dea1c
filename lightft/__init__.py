"""lightft: distributed-first fine-tuning of open LLMs on PyTorch Lightning.

The public names below are what configs refer to by `class_path` (e.g. `lightft.SFTModule`, `lightft.peft.LoRA`).
"""

import logging

# bitsandbytes warns on import that it cannot fetch an optional CPU kernel from the Hub (offline here); the
# built-in kernels are used instead, so the message is noise for users.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from lightft.data.datamodule import SFTDataModule
from lightft.errors import LightFTError
from lightft.models.loading import ModelSpec
from lightft.modules.base import LightFTModule
from lightft.modules.sft import SFTModule

__version__ = "0.1.0"

__all__ = ["LightFTError", "LightFTModule", "ModelSpec", "SFTDataModule", "SFTModule", "__version__"]
