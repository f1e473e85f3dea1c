"""PredictionWriter: `lightft predict` outputs as JSON lines, one file per rank and run, written batch by batch.
A whole `lightft predict` on a checkpoint: tests/test_cli.py."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from lightft.callbacks import PredictionWriter
from tests.conftest import cpu_trainer


class Echo(pl.LightningModule):
    """Predicts one row per example: its index and a text, non-ASCII included."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)

    def predict_step(self, batch: torch.Tensor, batch_idx: int) -> list[dict]:
        return [{"index": int(i), "completion": f"caf\u00e9 {int(i)}"} for i in batch]


def test_every_predicted_row_is_one_json_line_in_input_order(tmp_path):
    writer = PredictionWriter()
    trainer = cpu_trainer(tmp_path, callbacks=[writer])
    trainer.predict(Echo(), DataLoader(torch.arange(5), batch_size=2), return_predictions=False)
    assert writer.path.parent == tmp_path / "predictions" and writer.path.name.endswith("-rank0.jsonl")
    rows = [json.loads(line) for line in writer.path.read_text(encoding="utf-8").splitlines()]
    assert rows == [{"index": i, "completion": f"caf\u00e9 {i}"} for i in range(5)]
    assert "caf\u00e9" in writer.path.read_text(encoding="utf-8")  # written as UTF-8 text, not \\u escapes


def test_a_second_run_never_writes_into_the_first_runs_file(tmp_path):
    paths = []
    for _ in range(2):  # within the same second: the time stamp alone would name the same file
        writer = PredictionWriter()
        cpu_trainer(tmp_path, callbacks=[writer]).predict(Echo(), DataLoader(torch.arange(3), batch_size=3),
                                                          return_predictions=False)  # fmt: skip
        paths.append(writer.path)
    assert paths[0] != paths[1]
    assert all(len(path.read_text().splitlines()) == 3 for path in paths)
