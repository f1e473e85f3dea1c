"""Writes `lightft predict` outputs as JSON lines, one file per rank, never over an existing file."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter


class PredictionWriter(BasePredictionWriter):
    """Appends each predicted batch to `<default_root_dir>/predictions/<time>-rank<r>.jsonl`."""

    def __init__(self) -> None:
        super().__init__(write_interval="batch")
        self.path: Path | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Claim a fresh file for this run (created empty; a run in the same second gets a numbered name)."""
        if stage != "predict":
            return
        folder = Path(trainer.default_root_dir) / "predictions"
        folder.mkdir(parents=True, exist_ok=True)
        stamp, rank = time.strftime("%Y%m%d-%H%M%S"), trainer.global_rank
        for n in itertools.count(1):
            self.path = folder / (f"{stamp}-rank{rank}.jsonl" if n == 1 else f"{stamp}-{n}-rank{rank}.jsonl")
            try:
                self.path.open("x").close()  # exclusive creation: never another run's file
                return
            except FileExistsError:
                continue

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        """Append one JSON object per generated completion."""
        assert self.path is not None
        with self.path.open("a", encoding="utf-8") as out:
            for row in prediction:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
