"""BenchProbe (what `lightft bench` runs inside each cell's fit): the JSON record of peak memory, time per batch and
non-pad tokens/s after the warm-up. tests/test_bench.py runs the `lightft bench` command; tests/test_memory.py holds
a measured CPU run against the estimate."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch

from lightft.callbacks import bench
from lightft.callbacks.bench import BenchProbe, module_tensor_bytes, optimizer_state_bytes
from lightft.peft import LoRA
from tests.conftest import cpu_trainer
from tests.modules.test_sft import datamodule, module


class BatchTokens(pl.Callback):
    """Each training batch's non-pad tokens, from its attention mask."""

    def __init__(self) -> None:
        self.tokens: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.tokens.append(int(batch.attention_mask.sum()))


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="measures resident memory through Linux /proc")
def test_the_record_counts_only_the_batches_after_the_warm_up(tmp_path, tiny_spec, monkeypatch):
    ticks = itertools.count()  # one second per clock reading: every measured batch takes exactly 1 s
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    record, counted = tmp_path / "bench.json", BatchTokens()
    sft = module(tiny_spec, peft=LoRA(r=4, dropout=0.0))
    trainer = cpu_trainer(tmp_path, max_steps=4, callbacks=[counted, BenchProbe(str(record), warmup=1)])
    trainer.fit(sft, datamodule(tiny_spec, batch_size=2))
    measured = json.loads(record.read_text())
    assert measured["measured_steps"] == 3 and measured["step_seconds"] == 1.0
    assert measured["tokens_per_second"] == sum(counted.tokens[1:]) / 3  # the warm-up batch is not counted
    assert (measured["world_size"], measured["device"], measured["reserved_bytes"]) == (1, "cpu", None)
    # CPU: the tensors that live across steps (weights, optimizer states) plus how far resident memory rose
    assert measured["peak_bytes"] >= module_tensor_bytes(sft) + optimizer_state_bytes(trainer) > 0


def test_tensor_bytes_count_each_storage_once():
    layer = torch.nn.Linear(4, 4)
    layer.tied = torch.nn.Parameter(layer.weight.data)  # the same storage under a second name
    assert module_tensor_bytes(layer) == (16 + 4) * 4
