"""Per-optimizer-step throughput and memory: non-pad tokens/s summed over ranks, peak memory (max over ranks).

Lightning's ThroughputMonitor extrapolates rank 0's counts by the world size, which is wrong when length-grouped
batches differ across ranks; here every rank's real token count (`Batch.real_tokens`: packed rows count their
documents, prompt batches their prompt tokens) is reduced.
"""

from __future__ import annotations

import resource
import time
from typing import Any

import lightning.pytorch as pl
import torch

from lightft.data.batches import Batch


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this process: CUDA max allocated on GPU, max resident set size (RSS) on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class TrainingMonitor(pl.Callback):
    """Logs `train/tokens_per_sec` and `train/peak_memory_gb` once per optimizer step."""

    def __init__(self) -> None:
        self._tokens = 0
        self._start: float | None = None
        self._step = -1

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        """Start the clock at the first micro-batch of an optimizer step."""
        if self._start is None:
            self._start, self._step = time.perf_counter(), trainer.global_step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Batch, idx: int
    ) -> None:
        """Count tokens; when the optimizer has stepped, log throughput and memory."""
        self._tokens += batch.real_tokens()
        if trainer.global_step == self._step or self._start is None:
            return
        device = trainer.strategy.root_device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - self._start
        tokens = trainer.strategy.reduce(torch.tensor(float(self._tokens), device=device), reduce_op="sum")
        peak = torch.tensor(peak_memory_bytes(device) / 2**30, device=device)
        peak = trainer.strategy.reduce(peak, reduce_op="max") if trainer.world_size > 1 else peak
        pl_module.log("train/tokens_per_sec", float(tokens) / elapsed, on_step=True, on_epoch=False)
        pl_module.log("train/peak_memory_gb", float(peak), on_step=True, on_epoch=False)
        self._tokens, self._start = 0, None
