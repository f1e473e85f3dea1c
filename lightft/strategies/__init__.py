"""Strategy presets: Lightning strategies configured for fine-tuning transformers, chosen in a trainer overlay.

    trainer:
      strategy:
        class_path: lightft.strategies.FSDP2      # or DDP, FSDP, DeepSpeed
        init_args: {reshard_after_forward: true}

Every training module runs unchanged under each: the presets find the model's repeated decoder layers themselves
(transformers' `GradientCheckpointingLayer` subclasses, else the classes the model names in `_no_split_modules`) and
shard those, and keep checkpoints to the trainable weights. One module per preset; what they share is in `common`.

- `DDP` (`ddp.py`): one full replica per rank, gradients all-reduced.
- `FSDP` (`fsdp.py`): PyTorch FSDP (v1) with one unit per decoder layer and one per trainable leaf layer (LoRA's
  A/B), as peft recommends, so frozen and trainable weights never share a flat parameter. GPU only (Lightning refuses
  CPU).
- `FSDP2` (`fsdp2.py`): per-parameter sharding (`fully_shard`) of each decoder layer, then each top-level sub-model,
  through Lightning's `ModelParallelStrategy`; runs on CPU with gloo. Works with 4-bit QLoRA bases: bitsandbytes
  restores a gathered weight's quantization state from its layer.
- `DeepSpeed` (`deepspeed.py`): ZeRO stage 1/2/3 with optional optimizer / parameter CPU offload; Lightning builds
  the DeepSpeed config from these arguments and a raw DeepSpeed JSON (`config`) may override any of it. On GPUs,
  and on CPU through DeepSpeed's CPU accelerator (gloo), which Lightning's strategy refuses and this preset allows.
"""

from lightft.strategies.common import (
    KEY,
    DTypeName,
    check_trainable_keys,
    decoder_layer_classes,
    decoder_layers,
    is_trainable_leaf,
    strategy_kind,
    timeout,
    zero_stage,
)
from lightft.strategies.ddp import DDP
from lightft.strategies.deepspeed import DeepSpeed, check_deepspeed_files, deepspeed_safe_globals, read_deepspeed_json
from lightft.strategies.fsdp import FSDP, fsdp_wrap_policy
from lightft.strategies.fsdp2 import FSDP2, gathered_for_generation, release_gathered, shard_module

__all__ = [
    "DDP",
    "FSDP",
    "FSDP2",
    "KEY",
    "DTypeName",
    "DeepSpeed",
    "check_deepspeed_files",
    "check_trainable_keys",
    "decoder_layer_classes",
    "decoder_layers",
    "deepspeed_safe_globals",
    "fsdp_wrap_policy",
    "gathered_for_generation",
    "is_trainable_leaf",
    "read_deepspeed_json",
    "release_gathered",
    "shard_module",
    "strategy_kind",
    "timeout",
    "zero_stage",
]
