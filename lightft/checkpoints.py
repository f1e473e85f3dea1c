"""Reading a lightft checkpoint in one process, whichever strategy wrote it.

- a file: single process, DDP, FSDP2 (gathered, the default), FSDP (v1);
- a directory of `torch.distributed.checkpoint` shards: FSDP2 with `save_distributed_checkpoint: true`;
- a DeepSpeed checkpoint directory (`latest` + `checkpoint/`): the fp32 master weights, consolidated from every
  rank's ZeRO partitions by DeepSpeed's own `zero_to_fp32`.

Each gives the Lightning checkpoint dict (`state_dict` with the trainable weights, `hyper_parameters`, ...), so
`lightft export`, `generate` and the tests read any of them the same way. Everything is loaded with
`weights_only=True`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lightft.errors import LightFTError

WRAPPER_PREFIX = "_forward_module."  # Lightning's DeepSpeed wrapper around the LightningModule


def checkpoint_kind(path: str | Path) -> str:
    """`file`, `sharded` (torch.distributed.checkpoint) or `deepspeed`; raises for anything else."""
    path = Path(path)
    if path.is_file():
        return "file"
    if (path / ".metadata").is_file():
        return "sharded"
    if (path / "latest").is_file():
        return "deepspeed"
    if path.is_dir():
        raise LightFTError(
            f"--ckpt: '{path}' is a directory but neither FSDP2 shards (.metadata) nor a DeepSpeed checkpoint (latest)."
        )
    raise LightFTError(f"--ckpt: checkpoint '{path}' not found; runs keep them in <run dir>/checkpoints/.")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at `path` as one dict on CPU, its `state_dict` holding full (unsharded) tensors."""
    path = Path(path)
    kind = checkpoint_kind(path)
    if kind == "file":
        return torch.load(path, map_location="cpu", weights_only=True)
    if kind == "sharded":
        return _read_sharded(path)
    return _read_deepspeed(path)


def _read_sharded(path: Path) -> dict[str, Any]:
    from lightning.fabric.strategies.fsdp import _METADATA_FILENAME
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    weights: dict[str, Any] = {}  # only the model's weights, not the optimizer states beside them
    planner = _EmptyStateDictLoadPlanner(keys={"state_dict"})
    _load_state_dict(weights, storage_reader=FileSystemReader(path), planner=planner, no_dist=True)
    checkpoint = torch.load(path / _METADATA_FILENAME, map_location="cpu", weights_only=True)
    checkpoint["state_dict"] = weights["state_dict"]
    return checkpoint


def _read_deepspeed(path: Path) -> dict[str, Any]:
    try:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint, get_model_state_files
    except ImportError:
        raise LightFTError(f"--ckpt: '{path}' is a DeepSpeed checkpoint; pip install 'lightft[deepspeed]'.") from None
    tag = (path / "latest").read_text().strip()
    state = get_fp32_state_dict_from_zero_checkpoint(str(path), tag, exclude_frozen_parameters=True)
    # Lightning's own entries (hyper-parameters, loops, ...) are in rank 0's model-states file beside DeepSpeed's
    model_states = sorted(get_model_state_files(str(path / tag)))[0]
    checkpoint = torch.load(model_states, map_location="cpu", weights_only=True)
    checkpoint = {k: v for k, v in checkpoint.items() if k not in ("module", "optimizer", "frozen_param_fragments")}
    checkpoint["state_dict"] = {k.removeprefix(WRAPPER_PREFIX): v for k, v in state.items()}
    return checkpoint
