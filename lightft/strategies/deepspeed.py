"""`DeepSpeed`: ZeRO stage 1/2/3 with optional CPU offload, on GPUs and on DeepSpeed's CPU accelerator.

Also the check that a DeepSpeed checkpoint holds nothing but tensors and DeepSpeed's own records before DeepSpeed
unpickles it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.strategies import DeepSpeedStrategy

from lightft.errors import LightFTError
from lightft.strategies.common import KEY, timeout


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
            timeout=timeout(timeout_minutes),
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
