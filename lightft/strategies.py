"""Strategy presets: Lightning strategies configured for fine-tuning transformers, chosen in a trainer overlay.

    trainer:
      strategy:
        class_path: lightft.strategies.FSDP2      # or DDP, FSDP, DeepSpeed
        init_args: {reshard_after_forward: true}

Every training module runs unchanged under each: the presets find the model's repeated decoder layers themselves
(transformers' `GradientCheckpointingLayer` subclasses, else the classes the model names in `_no_split_modules`) and
shard those, and keep checkpoints to the trainable weights.

- `DDP`: one full replica per rank, gradients all-reduced.
- `FSDP`: PyTorch FSDP (v1) with one unit per decoder layer and one per trainable leaf layer (LoRA's A/B), as peft
  recommends, so frozen and trainable weights never share a flat parameter. GPU only (Lightning refuses CPU).
- `FSDP2`: per-parameter sharding (`fully_shard`) of each decoder layer, then each top-level sub-model, through
  Lightning's `ModelParallelStrategy`; runs on CPU with gloo. Works with 4-bit QLoRA bases: bitsandbytes restores a
  gathered weight's quantization state from its layer.
- `DeepSpeed`: ZeRO stage 1/2/3 with optional optimizer / parameter CPU offload; Lightning builds the DeepSpeed
  config from these arguments and a raw DeepSpeed JSON (`config`) may override any of it. On GPUs, and on CPU
  through DeepSpeed's CPU accelerator (gloo), which Lightning's strategy refuses and this preset allows.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from torch import nn

from lightft.errors import LightFTError

KEY = "trainer.strategy"
DTypeName = Literal["float32", "bfloat16", "float16"]


def decoder_layer_classes(module: nn.Module) -> set[type[nn.Module]]:
    """Classes of the repeated transformer blocks inside `module`: the units to shard, wrap and checkpoint."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    classes = {type(m) for m in module.modules() if isinstance(m, GradientCheckpointingLayer)}
    if classes:
        return classes
    names = {n for m in module.modules() for n in (getattr(m, "_no_split_modules", None) or [])}
    return {type(m) for m in module.modules() if type(m).__name__ in names}


def decoder_layers(module: nn.Module) -> list[nn.Module]:
    """Every decoder-layer instance inside `module`, outermost first (nested matches are skipped)."""
    classes = tuple(decoder_layer_classes(module))
    found: list[nn.Module] = []
    inside: set[int] = set()
    for m in module.modules():
        if id(m) in inside:
            continue
        if classes and isinstance(m, classes):
            found.append(m)
            inside.update(id(s) for s in m.modules())
    return found


def is_trainable_leaf(module: nn.Module) -> bool:
    """A layer without children whose weight trains: LoRA's A/B, a value head; FSDP wraps it on its own."""
    weight = getattr(module, "weight", None)
    return next(module.children(), None) is None and isinstance(weight, nn.Parameter) and weight.requires_grad


def _timeout(minutes: float) -> timedelta:
    return timedelta(minutes=minutes)


def _dtype(name: str | None) -> torch.dtype | None:
    return getattr(torch, name) if name else None


class DDP(DDPStrategy):
    """Distributed data parallel: a full replica per rank, gradients all-reduced in buckets.

    Args:
        find_unused_parameters: Search the graph for parameters without gradient each step; only needed when some
            trainable parameters are skipped in a step (slower).
        static_graph: Tell DDP the set of used parameters never changes (faster with activation checkpointing).
        gradient_as_bucket_view: Gradients are views into the all-reduce buckets (saves one gradient copy).
        process_group_backend: `nccl` (GPU), `gloo` (CPU); default picks by accelerator.
        timeout_minutes: How long a collective may wait before the job fails.
    """

    def __init__(
        self,
        find_unused_parameters: bool = False,
        static_graph: bool = False,
        gradient_as_bucket_view: bool = True,
        process_group_backend: str | None = None,
        timeout_minutes: float = 30.0,
    ) -> None:
        super().__init__(
            find_unused_parameters=find_unused_parameters,
            static_graph=static_graph,
            gradient_as_bucket_view=gradient_as_bucket_view,
            process_group_backend=process_group_backend,
            timeout=_timeout(timeout_minutes),
        )


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
            timeout=_timeout(timeout_minutes),
        )

    def setup(self, trainer: Any) -> None:
        """Set the wrap policy from the loaded model's decoder-layer classes, then wrap."""
        classes = tuple(decoder_layer_classes(self.lightning_module))
        if not classes:
            raise LightFTError(f"{KEY}: FSDP found no decoder layer in the model to wrap; use DDP or DeepSpeed.")
        self.kwargs["auto_wrap_policy"] = partial(fsdp_wrap_policy, layer_classes=classes)
        super().setup(trainer)


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
            timeout=_timeout(timeout_minutes),
        )
        self.reshard_after_forward, self.cpu_offload, self.hybrid = reshard_after_forward, cpu_offload, hybrid
        self.param_dtype, self.reduce_dtype = param_dtype, reduce_dtype

    def setup_environment(self) -> None:
        """A (replicate, shard) device mesh: every rank shards, or (hybrid) ranks of a node shard, nodes replicate."""
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
            full_state_dict=not self._save_distributed_checkpoint, cpu_offload=True, ignore_frozen_params=True
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
        from lightning.fabric.strategies.fsdp import _METADATA_FILENAME
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


def check_trainable_keys(module: nn.Module, saved: Any, path: Path | str) -> None:
    """Fail clearly when a checkpoint lacks weights `module` trains (written by another model or PEFT strategy)."""
    missing = {n for n, p in module.named_parameters() if p.requires_grad} - set(saved)
    if missing:
        raise LightFTError(
            f"--ckpt_path: {path} lacks {len(missing)} trainable weights of this model (e.g. {sorted(missing)[0]}); "
            "it was written by another model or PEFT strategy."
        )


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


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_deepspeed_json(config: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """A raw DeepSpeed config from a JSON file path or an inline mapping."""
    if config is None or isinstance(config, dict):
        return config
    path = Path(config)
    if not path.is_file():
        raise LightFTError(f"{KEY}.init_args.config: no DeepSpeed JSON at {config}; give a path or an inline mapping.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise LightFTError(f"{KEY}.init_args.config: {config}:{error.lineno}: not valid JSON ({error.msg}).") from None


class DeepSpeed(DeepSpeedStrategy):
    """DeepSpeed ZeRO-1/2/3 with optional CPU offload of optimizer states and (stage 3) parameters.

    Checkpoints leave the frozen base out (`exclude_frozen_parameters`). QLoRA runs under ZeRO-1/2; under ZeRO-3 the
    compatibility check refuses it (bitsandbytes' 4-bit weights cannot be partitioned by `zero.Init`). Under ZeRO-3
    transformers is told (`HfDeepSpeedConfig`) so that it builds and loads the base model partitioned.

    On `accelerator: cpu` it runs on DeepSpeed's CPU accelerator with gloo (what the CPU tests use); Lightning's
    `DeepSpeedStrategy` alone refuses anything but CUDA.

    Args:
        stage: ZeRO stage: 1 shards optimizer states, 2 also gradients, 3 also parameters.
        offload_optimizer: Optimizer states (and the step) in CPU memory.
        offload_parameters: Parameters in CPU memory between uses (stage 3 only).
        pin_memory: Pin the offloaded CPU buffers (faster transfers, more host memory).
        config: A raw DeepSpeed JSON (path or mapping) merged over the config Lightning builds from these arguments.
        process_group_backend: `nccl` (GPU); default picks by accelerator.
        timeout_minutes: How long a collective may wait before the job fails.
    """

    def __init__(
        self,
        stage: Literal[1, 2, 3] = 2,
        offload_optimizer: bool = False,
        offload_parameters: bool = False,
        pin_memory: bool = True,
        config: str | dict[str, Any] | None = None,
        process_group_backend: str | None = None,
        timeout_minutes: float = 30.0,
    ) -> None:
        if offload_parameters and stage != 3:
            raise LightFTError(f"{KEY}.init_args.offload_parameters: needs stage: 3 (got stage: {stage}).")
        super().__init__(
            stage=stage,
            offload_optimizer=offload_optimizer,
            offload_parameters=offload_parameters,
            pin_memory=pin_memory,
            exclude_frozen_parameters=True,
            process_group_backend=process_group_backend,
            timeout=_timeout(timeout_minutes),
        )
        # Lightning built the config from these arguments; add a consolidated 16-bit save (ZeRO-3), then the raw JSON
        if stage == 3:
            self.config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
        self.config = _merge(self.config, read_deepspeed_json(config) or {})
        self._hf_deepspeed_config: Any = None

    @property
    def _on_cpu(self) -> bool:
        return self.parallel_devices is not None and self.parallel_devices[0].type == "cpu"

    @property
    def root_device(self) -> torch.device:
        """On CPU an indexed device: DeepSpeed takes the device's index as its rank on the machine."""
        device = super().root_device
        return torch.device("cpu", 0) if device.type == "cpu" else device

    def setup_environment(self) -> None:
        """Lightning's CUDA-only check, except on CPU where DeepSpeed's own CPU accelerator must be the one in use."""
        if not self._on_cpu:
            return super().setup_environment()
        from deepspeed.accelerator import get_accelerator

        if get_accelerator().device_name() != "cpu":
            raise LightFTError(
                f"{KEY}: DeepSpeed on accelerator: cpu needs DeepSpeed's CPU accelerator, but it picked "
                f"'{get_accelerator().device_name()}'; set DS_ACCELERATOR=cpu in the environment."
            )
        return super(DeepSpeedStrategy, self).setup_environment()

    def setup_distributed(self) -> None:
        """As Lightning's, without its check of GPU indices on CPU."""
        if not self._on_cpu:
            return super().setup_distributed()
        from lightning.fabric.utilities.seed import reset_seed

        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """DeepSpeed unpickles its files without `weights_only`; with it (the default), each file is first read
        under `weights_only=True` (DeepSpeed's own enum and loss-scaler classes allowed, memory-mapped, cheap) and
        a file holding anything else is refused before DeepSpeed loads it.
        """  # noqa: D205
        if weights_only is not False:
            check_deepspeed_files(Path(self.broadcast(str(checkpoint_path))))
        return super().load_checkpoint(checkpoint_path, weights_only)

    @contextmanager
    def model_sharded_context(self) -> Iterator[None]:
        """ZeRO-3: transformers builds and loads the base model partitioned (`zero.Init` of its own).

        The rest of `configure_model` (PEFT adapters, heads) runs outside `zero.Init`, so their initialisation
        (e.g. LoRA's B = 0) happens on whole tensors, and DeepSpeed partitions them when the engine starts.
        Lightning's context would wrap it all, and adapters created partitioned would skip their initialisation.
        """
        self._init_config_if_needed()
        if self.zero_stage_3 and self._hf_deepspeed_config is None:
            from transformers.integrations import HfDeepSpeedConfig

            self._hf_deepspeed_config = HfDeepSpeedConfig(self.config)  # transformers keeps a weak reference
        yield


def deepspeed_safe_globals() -> list[Any]:
    """The classes DeepSpeed pickles into its checkpoints besides tensors and plain data: its configuration enums,
    loss scalers and parameter-fragment records (allowed when checking, nothing else is).
    """  # noqa: D205
    from deepspeed.runtime.fp16 import loss_scaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.runtime.zero.offload_config import OffloadDeviceEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, OffloadDeviceEnum, loss_scaler.LossScaler, loss_scaler.DynamicLossScaler, fragment_address]


def check_deepspeed_files(path: Path) -> None:
    """Raise (`pickle.UnpicklingError`) if a file of the DeepSpeed checkpoint at `path` holds other objects."""
    files = sorted(path.rglob("*.pt"))
    if not files:
        return  # not a DeepSpeed directory: DeepSpeed reports that itself
    with torch.serialization.safe_globals(deepspeed_safe_globals()):
        for file in files:
            torch.load(file, map_location="cpu", mmap=True, weights_only=True)


def zero_stage(strategy: DeepSpeedStrategy) -> int:
    """The ZeRO stage a DeepSpeed strategy will run (its config, raw JSON included), 0 without ZeRO."""
    return int(strategy.config.get("zero_optimization", {}).get("stage", 0))


def strategy_kind(strategy: Any) -> str:
    """`single`, `ddp`, `fsdp`, `fsdp2` or `deepspeed` for a trainer's strategy object."""
    for kind, cls in (("fsdp2", ModelParallelStrategy), ("fsdp", FSDPStrategy), ("deepspeed", DeepSpeedStrategy)):
        if isinstance(strategy, cls):
            return kind
    return "ddp" if isinstance(strategy, DDPStrategy) else "single"
