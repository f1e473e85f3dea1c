"""What `lightft bench` measures inside each cell's `lightft fit`: peak memory, step time, trained tokens/s.

Peak memory per rank, reported as the maximum over ranks, from the first batch after the warm-up on (the model
loaded, the data pipeline built, the optimizer's states created, so neither loading transients, the tokenized
dataset nor the first step's one-off allocations count: on CPU ~50 MB more resident memory during the first step of
SmolLM2 at 2 x 512 tokens, with the same tensor allocations as later steps). On GPUs: CUDA's max allocated and max
reserved; on CPU: the model's tensors and the optimizer's states at that point plus how far resident memory rose
above its level then (Linux `VmHWM`; run with glibc's MALLOC_MMAP_THRESHOLD_ fixed, as `lightft bench` does, so that
freed tensors leave resident memory).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from lightft.data.batches import Batch


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def module_tensor_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers on this rank (each storage once; a shard's local part)."""
    storages = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        storage = local.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def optimizer_state_bytes(trainer: pl.Trainer) -> int:
    """Bytes of the optimizers' state tensors on this rank (moments, 8-bit quantization constants)."""
    tensors = [v for optimizer in trainer.optimizers for state in optimizer.state.values() for v in state.values()]
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


class BenchProbe(pl.Callback):
    """Writes a JSON record of the run to `path` (rank 0).

    Peak memory, mean time per training batch after `warmup` batches, trained (non-pad) tokens/s over all ranks,
    world size, device.
    """

    def __init__(self, path: str, warmup: int = 1) -> None:
        self.path, self.warmup = Path(path), warmup
        self.start_rss: int | None = None
        self.start_tensors = 0
        self.steps: list[float] = []
        self.tokens = 0
        self._batches = 0
        self._start = 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        """Reset the peaks when the first measured batch (after the warm-up) starts; start the step clock."""
        device = trainer.strategy.root_device
        if self.start_rss is None and self._batches >= self.warmup:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                self.start_rss = 0
            else:  # what lives across steps: the module's tensors and the optimizers' states
                self.start_tensors = module_tensor_bytes(pl_module) + optimizer_state_bytes(trainer)
                Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
                self.start_rss = _status_bytes("VmRSS")
        self._sync(trainer)
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Batch, idx: int
    ) -> None:
        """Stop the step clock; count the batch's non-pad tokens after the warm-up steps."""
        self._sync(trainer)
        self._batches += 1
        if self._batches > self.warmup:  # counted across epochs (the batch index restarts each epoch)
            self.steps.append(time.perf_counter() - self._start)
            self.tokens += batch.real_tokens()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Reduce over ranks and write the record."""
        device = trainer.strategy.root_device
        if device.type == "cuda":
            peak, reserved = torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)
        else:
            peak, reserved = _status_bytes("VmHWM") - (self.start_rss or 0) + self.start_tensors, 0
        stats = torch.tensor([float(peak), float(reserved), sum(self.steps)], device=device)
        stats = trainer.strategy.reduce(stats, reduce_op="max") if trainer.world_size > 1 else stats
        tokens = trainer.strategy.reduce(torch.tensor(float(self.tokens), device=device), reduce_op="sum")
        if not trainer.is_global_zero:
            return
        seconds = float(stats[2])
        record = {
            "peak_bytes": float(stats[0]),
            "reserved_bytes": float(stats[1]) if device.type == "cuda" else None,
            "step_seconds": seconds / max(1, len(self.steps)),
            "tokens_per_second": float(tokens) / seconds if seconds else None,
            "measured_steps": len(self.steps),
            "world_size": trainer.world_size,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        }
        self.path.write_text(json.dumps(record))

    @staticmethod
    def _sync(trainer: pl.Trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)
