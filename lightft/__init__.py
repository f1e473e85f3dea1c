"""lightft: distributed-first fine-tuning of open LLMs on PyTorch Lightning.

The public names below are what configs refer to by `class_path` (e.g. `lightft.SFTModule`, `lightft.peft.LoRA`).
"""

import logging
import warnings

# Library chatter that users cannot act on: bitsandbytes cannot fetch an optional CPU kernel from the Hub (its
# built-in kernels are used), peft calls a transformers method renamed in v5, Lightning uses a deprecated torch
# pytree check, Lightning advertises a cloud logger at every start and warns about the empty validation loader that
# SFTDataModule returns on purpose when no validation data is configured; bitsandbytes notes on every int8 matmul that
# it computes in fp16; torchao cannot load its CUDA-only kernel libraries on a CPU machine, and registers enums that
# torch's pytree now supports natively.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").addFilter(lambda record: "register_constant()" not in str(record.msg))
warnings.filterwarnings("ignore", message=r".*`is_gradient_checkpointing` is deprecated", category=FutureWarning)
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
warnings.filterwarnings("ignore", message=r"Total length of `list` across ranks is zero")
warnings.filterwarnings("ignore", message=r"MatMul8bitLt: inputs will be cast")  # LLM.int8 computes in fp16
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda record: not str(record.msg).startswith("💡 Tip")
)

from lightft.data.preference_datamodule import PreferenceDataModule  # noqa: E402
from lightft.data.prompt_datamodule import PromptDataModule  # noqa: E402
from lightft.data.sft_datamodule import SFTDataModule  # noqa: E402
from lightft.errors import LightFTError  # noqa: E402
from lightft.models.loading import ModelSpec  # noqa: E402
from lightft.modules.base import LightFTModule  # noqa: E402
from lightft.modules.dpo import DPOModule  # noqa: E402
from lightft.modules.ppo import PPOModule  # noqa: E402
from lightft.modules.reward import RewardModelModule  # noqa: E402
from lightft.modules.sft import SFTModule  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "DPOModule",
    "LightFTError",
    "LightFTModule",
    "ModelSpec",
    "PPOModule",
    "PreferenceDataModule",
    "PromptDataModule",
    "RewardModelModule",
    "SFTDataModule",
    "SFTModule",
    "__version__",
]
