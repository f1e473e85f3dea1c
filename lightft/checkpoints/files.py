"""Writing checkpoints safely and reading them back in one process, whichever strategy wrote them.

Writing (`save_atomically`): into a hidden sibling first, then renamed into place, so a crash during a save never
leaves a half-written checkpoint under the real name.

Reading:

- a file: single process, DDP, FSDP2 (gathered, the default), FSDP (v1);
- a directory of `torch.distributed.checkpoint` shards: FSDP2 with `save_distributed_checkpoint: true`;
- a DeepSpeed checkpoint directory (`latest` + `checkpoint/`): the fp32 master weights, consolidated from every
  rank's ZeRO partitions by DeepSpeed's own `zero_to_fp32`.

Each gives the Lightning checkpoint dict (`state_dict` with the trainable weights, `hyper_parameters`, ...), so
`lightft export`, `generate` and the tests read any of them the same way. Everything is loaded with
`weights_only=True`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from lightft.errors import LightFTError

WRAPPER_PREFIX = "_forward_module."  # Lightning's DeepSpeed wrapper around the LightningModule
# hidden folders beside the checkpoints (same filesystem: renames are atomic; names other tools never match)
PARTIAL, OLD = ".partial", ".replaced"  # a checkpoint being written / a directory checkpoint being replaced


def save_atomically(trainer: pl.Trainer, filepath: str | Path, weights_only: bool = False, check: Any = None) -> None:
    """`trainer.save_checkpoint(filepath)` through a hidden sibling renamed into place (all ranks call it).

    A file is replaced by one `os.replace` (atomic). A directory (FSDP2 shards, DeepSpeed) cannot be: the old one
    is moved aside, the new one renamed in, then the old one deleted; `recover_interrupted` undoes a crash in
    between. `check(path)` (rank 0) runs on the written checkpoint before it replaces anything.
    """
    final = Path(filepath)
    partial, old = final.parent / PARTIAL / final.name, final.parent / OLD / final.name
    if trainer.is_global_zero:
        _remove(partial)  # left by a crash during an earlier save
        partial.parent.mkdir(parents=True, exist_ok=True)
        old.parent.mkdir(exist_ok=True)
    trainer.strategy.barrier("lightft.save_atomically")
    trainer.save_checkpoint(partial, weights_only)  # ends with a barrier: every rank has written its part
    if trainer.is_global_zero:
        if check is not None and partial.is_file():
            check(partial)
        if partial.is_dir():
            _remove(old)
            if final.exists():
                final.rename(old)
            partial.rename(final)
            _remove(old)
        else:
            with open(partial, "rb") as f:
                os.fsync(f.fileno())  # the bytes are on disk before the name points at them
            os.replace(partial, final)
        _fsync_dir(final.parent)
        for folder in (partial.parent, old.parent):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
    trainer.strategy.barrier("lightft.save_atomically")


def recover_interrupted(directory: str | Path) -> None:
    """Put back a checkpoint directory moved aside by a save that crashed before its replacement was renamed in."""
    directory = Path(directory)
    if not (directory / OLD).is_dir():
        return
    for old in (directory / OLD).iterdir():
        final = directory / old.name
        if final.exists():
            _remove(old)
        else:
            old.rename(final)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def run_checkpoint(ckpt: str, run: str | None, key: str = "--ckpt") -> str:
    """`best` or `last` (given as `key`) with `--run DIR`: `DIR/checkpoints/best.ckpt` (`last.ckpt`); a missing one
    is one line naming the fix. Anything else is a path, returned as given.
    """  # noqa: D205
    if ckpt not in ("best", "last"):
        if run is not None:
            raise LightFTError(f"--run: read only with {key} best or {key} last, not with a path ('{ckpt}').")
        return ckpt
    if run is None:
        raise LightFTError(f"{key} {ckpt}: name the run: --run runs/<name> (it reads checkpoints/{ckpt}.ckpt there).")
    path = Path(run) / "checkpoints" / f"{ckpt}.ckpt"
    if path.exists():
        return str(path)
    if not Path(run).is_dir():
        raise LightFTError(f"--run: '{run}' is not a directory; give the run's trainer.default_root_dir.")
    if ckpt == "best":
        raise LightFTError(
            f"{key} best: '{path}' does not exist: the run never validated on its best.monitor metric (auto: "
            f"val/loss, which needs validation data); use {key} last, or train with data.init_args.val."
        )
    raise LightFTError(f"{key} last: '{path}' does not exist: the run has written no checkpoint there yet.")


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
    from lightft.strategies import check_deepspeed_files

    check_deepspeed_files(path)  # DeepSpeed's reader unpickles without weights_only: refuse foreign objects first
    tag = (path / "latest").read_text().strip()
    state = get_fp32_state_dict_from_zero_checkpoint(str(path), tag, exclude_frozen_parameters=True)
    # Lightning's own entries (hyper-parameters, loops, ...) are in rank 0's model-states file beside DeepSpeed's
    model_states = sorted(get_model_state_files(str(path / tag)))[0]
    checkpoint = torch.load(model_states, map_location="cpu", weights_only=True)
    checkpoint = {k: v for k, v in checkpoint.items() if k not in ("module", "optimizer", "frozen_param_fragments")}
    checkpoint["state_dict"] = {k.removeprefix(WRAPPER_PREFIX): v for k, v in state.items()}
    return checkpoint
