"""`FSDP`: PyTorch FSDP (v1) with one unit per decoder layer and one per trainable leaf layer (LoRA's A/B)."""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

from lightning.pytorch.strategies import FSDPStrategy
from torch import nn

from lightft.errors import LightFTError
from lightft.strategies.common import KEY, decoder_layer_classes, is_trainable_leaf, timeout


def fsdp_wrap_policy(module: nn.Module, recurse: bool, nonwrapped_numel: int, *, layer_classes: tuple) -> bool:
    """FSDP (v1) auto-wrap: a unit per decoder layer and per trainable leaf layer (LoRA A/B), as peft does."""
    if recurse:
        return True
    return isinstance(module, layer_classes) or is_trainable_leaf(module)


class FSDP(FSDPStrategy):
    """Fully sharded data parallel (PyTorch FSDP v1): parameters, gradients and optimizer states sharded.

    Units: each decoder layer, and each trainable leaf layer (LoRA's A/B) on its own so frozen and trainable weights
    never share a flat parameter. Mixed precision follows `trainer.precision`; activation checkpointing follows the
    module's `gradient_checkpointing`. QLoRA under FSDP needs the 4-bit weights stored in the compute dtype
    (`QLoRA(quant_storage: bfloat16)`), which the compatibility check asks for.

    Args:
        sharding: `FULL_SHARD` (ZeRO-3-like), `SHARD_GRAD_OP` (ZeRO-2-like), `HYBRID_SHARD` (shard within a node,
            replicate across nodes) or `NO_SHARD` (DDP).
        cpu_offload: Keep sharded parameters (and their gradients) in CPU memory between uses.
        state_dict_type: `full` (one file, gathered on rank 0; what `lightft export` reads) or `sharded` (a
            directory, one file per rank; faster for large full fine-tuning runs).
        limit_all_gathers: Rate-limit all-gathers (lower peak memory).
        process_group_backend: `nccl` (GPU); default picks by accelerator.
        timeout_minutes: How long a collective may wait before the job fails.
    """

    def __init__(
        self,
        sharding: Literal["FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD"] = "FULL_SHARD",
        cpu_offload: bool = False,
        state_dict_type: Literal["full", "sharded"] = "full",
        limit_all_gathers: bool = True,
        process_group_backend: str | None = None,
        timeout_minutes: float = 30.0,
    ) -> None:
        super().__init__(
            sharding_strategy=sharding,
            cpu_offload=cpu_offload,
            state_dict_type=state_dict_type,
            limit_all_gathers=limit_all_gathers,
            use_orig_params=True,  # frozen and trainable parameters may still meet in a unit (norms, embeddings)
            auto_wrap_policy=partial(fsdp_wrap_policy, layer_classes=()),  # the layer classes are set in `setup`
            process_group_backend=process_group_backend,
            timeout=timeout(timeout_minutes),
        )

    def setup(self, trainer: Any) -> None:
        """Set the wrap policy from the loaded model's decoder-layer classes, then wrap."""
        classes = tuple(decoder_layer_classes(self.lightning_module))
        if not classes:
            raise LightFTError(f"{KEY}: FSDP found no decoder layer in the model to wrap; use DDP or DeepSpeed.")
        self.kwargs["auto_wrap_policy"] = partial(fsdp_wrap_policy, layer_classes=classes)
        super().setup(trainer)
