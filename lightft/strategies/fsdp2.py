"""`FSDP2`: per-parameter sharding (`fully_shard`) through Lightning's `ModelParallelStrategy`.

Also the helpers the training modules call around FSDP2-sharded models: reshard a frozen copy after its forward,
gather the weights once for generation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from lightft.errors import LightFTError
from lightft.strategies.common import KEY, DTypeName, check_trainable_keys, decoder_layers, timeout


def _dtype(name: str | None) -> torch.dtype | None:
    return getattr(torch, name) if name else None


class FSDP2(ModelParallelStrategy):
    """Per-parameter sharding (PyTorch FSDP2, `fully_shard`) over all ranks, through `ModelParallelStrategy`.

    Each decoder layer becomes one sharding unit, then each top-level sub-model of the training module (the policy,
    a value head, a frozen reference copy) gets its remaining parameters sharded. Runs on GPU (nccl) and CPU (gloo).

    Args:
        reshard_after_forward: Free each layer's gathered weights after its forward (ZeRO-3 memory); false keeps
            them until the backward (ZeRO-2-like: less communication, more memory).
        cpu_offload: Keep sharded parameters, gradients and optimizer states in CPU memory (GPU only).
        param_dtype: Dtype the gathered weights compute in (mixed precision), e.g. `bfloat16`; default: as stored.
        reduce_dtype: Dtype gradients are reduced in; default: `param_dtype`.
        hybrid: Shard within a node and replicate across nodes (HSDP): less inter-node traffic.
        save_distributed_checkpoint: False (default): trainable weights and optimizer state gathered into one file
            on rank 0 (what `lightft export` reads); true: a directory with one shard per rank.
        process_group_backend: `nccl` (GPU), `gloo` (CPU); default picks by accelerator.
        timeout_minutes: How long a collective may wait before the job fails.
    """

    def __init__(
        self,
        reshard_after_forward: bool = True,
        cpu_offload: bool = False,
        param_dtype: DTypeName | None = None,
        reduce_dtype: DTypeName | None = None,
        hybrid: bool = False,
        save_distributed_checkpoint: bool = False,
        process_group_backend: str | None = None,
        timeout_minutes: float = 30.0,
    ) -> None:
        super().__init__(
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout(timeout_minutes),
        )
        self.reshard_after_forward, self.cpu_offload, self.hybrid = reshard_after_forward, cpu_offload, hybrid
        self.param_dtype, self.reduce_dtype = param_dtype, reduce_dtype
        self.save_distributed_checkpoint = save_distributed_checkpoint

    def setup_environment(self) -> None:
        """A (replicate, shard) device mesh: every rank shards, or (hybrid) ranks of a node shard, nodes replicate.

        `ModelParallelStrategy` takes the mesh's sizes only in its constructor, before the number of nodes is known,
        and reads them from its private attributes here.
        """
        nodes, per_node = self.num_nodes, self.num_processes
        self._data_parallel_size, self._tensor_parallel_size = (
            (nodes, per_node) if self.hybrid else (1, nodes * per_node)
        )
        super().setup_environment()

    @property
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        """Every rank is a data-parallel rank (the mesh's second axis shards, it does not split the model)."""
        return {"num_replicas": self.world_size, "rank": self.global_rank}

    def shard_kwargs(self) -> dict[str, Any]:
        """Arguments of `fully_shard` for every unit."""
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy

        mesh = self.device_mesh
        kwargs: dict[str, Any] = {
            "mesh": mesh if self.hybrid else mesh["tensor_parallel"],
            "reshard_after_forward": self.reshard_after_forward,
        }
        if self.param_dtype or self.reduce_dtype:
            kwargs["mp_policy"] = MixedPrecisionPolicy(
                param_dtype=_dtype(self.param_dtype), reduce_dtype=_dtype(self.reduce_dtype or self.param_dtype)
            )
        if self.cpu_offload:
            kwargs["offload_policy"] = CPUOffloadPolicy()
        return kwargs

    def setup(self, trainer: Any) -> None:
        """Shard the configured model, then let `ModelParallelStrategy` set up devices and optimizers."""
        shard_module(self.lightning_module, **self.shard_kwargs())
        super().setup(trainer)

    def lightning_module_state_dict(self) -> dict[str, Any]:
        """Only the trainable weights, gathered (or, with distributed checkpoints, this rank's shards)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(
            full_state_dict=not self.save_distributed_checkpoint, cpu_offload=True, ignore_frozen_params=True
        )
        return get_model_state_dict(self.model, options=options)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Resume from a gathered file or a directory of shards; both hold only the trainable weights."""
        path = Path(self.broadcast(str(checkpoint_path)))
        if not path.is_dir():
            saved = torch.load(path, map_location="cpu", mmap=True, weights_only=True)["state_dict"]
            check_trainable_keys(self.lightning_module, saved.keys(), path)
            return super().load_checkpoint(path, weights_only)
        import torch.distributed.checkpoint as dcp
        from lightning.fabric.utilities.load import _METADATA_FILENAME  # what ModelParallelStrategy writes
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        trainable = StateDictOptions(ignore_frozen_params=True, strict=False)
        state: dict[str, Any] = {"state_dict": get_model_state_dict(self.model, options=trainable)}
        optimizers = {f"optimizer_{i}": optimizer for i, optimizer in enumerate(self.optimizers)}
        for key, optimizer in optimizers.items():
            state[key] = get_optimizer_state_dict(self.model, optimizer)
        dcp.load(state, checkpoint_id=path)
        set_model_state_dict(self.model, state["state_dict"], options=trainable)
        for key, optimizer in optimizers.items():
            set_optimizer_state_dict(self.model, optimizer, optim_state_dict=state[key])
        return torch.load(path / _METADATA_FILENAME, weights_only=weights_only)


def shard_module(module: nn.Module, **kwargs: Any) -> None:
    """`fully_shard` each decoder layer, then each top-level child that holds parameters (not the module itself)."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if any(isinstance(m, FSDPModule) for m in module.modules()):
        return  # already sharded (e.g. fit, then test, in one process)
    layers = decoder_layers(module)
    if not layers:
        raise LightFTError(f"{KEY}: FSDP2 found no decoder layer in the model to shard; use DDP or DeepSpeed.")
    for layer in layers:
        fully_shard(layer, **kwargs)
    # The sub-models' own weights (embeddings, final norm, output layer) stay gathered from forward to backward, as
    # FSDP2 does for a root by default: lightft applies the output layer after the forward, a chunk of positions at a
    # time (`lightft.models.forward`), and backward recomputes those chunks. Backward's end reshards them; a frozen
    # sub-model is resharded after each use (`release_gathered`).
    for child in module.children():
        if any(True for _ in child.parameters()):
            fully_shard(child, **{**kwargs, "reshard_after_forward": False})


def release_gathered(model: nn.Module) -> None:
    """Reshard a frozen FSDP2 sub-model's own weights after its forward (a DPO reference copy: no backward will).

    Not for the policy: it keeps them until its next backward, which reshards them; resharding it here could free
    weights that a pending backward (recomputing the output layer) still needs.
    """
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        model.reshard()


@contextmanager
def gathered_for_generation(model: nn.Module) -> Iterator[None]:
    """Gather FSDP2-sharded weights once for the whole of `generate` (not once per decoding step), then reshard.

    `generate` calls the inner model's forward, never the FSDP root's, so the root's parameters would otherwise stay
    sharded. With the weights gathered, decoding runs no collective, so ranks that finish at different lengths
    cannot hang. A model without FSDP2 units is left as it is.
    """
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not units:
        yield
        return
    units[0]._get_fsdp_state()._lazy_init()  # the root first: FSDP2 initialises from its root (a no-op after that)
    keep = [_reshards_after_forward(unit) for unit in units]
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit, reshard in zip(units, keep, strict=True):
            unit.reshard()
            unit.set_reshard_after_forward(reshard, recurse=False)


def _reshards_after_forward(unit: nn.Module) -> bool:
    groups = unit._get_fsdp_state()._fsdp_param_groups
    return any(group.post_forward_mesh_info is not None for group in groups)
