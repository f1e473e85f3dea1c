"""TrainingMonitor: once per optimizer step, the step's non-pad tokens per second summed over ranks and the peak
memory (max over ranks); with a clock that ticks once per reading, tokens/s is exactly the step's real tokens."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers.logger import Logger

from lightft.callbacks import monitor
from lightft.callbacks.monitor import TrainingMonitor, peak_memory_bytes
from lightft.data.batches import PromptBatch
from lightft.peft import LoRA
from tests.conftest import cpu_trainer
from tests.modules.test_sft import datamodule, module


class Recorder(Logger):
    """Keeps every logged metrics dict."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[dict[str, float]] = []

    @property
    def name(self) -> str:
        return "recorder"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.metrics.append(dict(metrics))

    def values(self, key: str) -> list[float]:
        return [m[key] for m in self.metrics if key in m]


class StepTokens(pl.Callback):
    """The real tokens of each optimizer step, counted from the examples' lengths (not from the batch's mask)."""

    def __init__(self, accumulate: int) -> None:
        self.accumulate, self.micro = accumulate, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        lengths = trainer.datamodule.datasets["train"].rows["length"]
        self.micro.append(sum(lengths[i] for row in batch.rows for i in row))

    def steps(self) -> list[int]:
        return [sum(self.micro[i : i + self.accumulate]) for i in range(0, len(self.micro), self.accumulate)]


@pytest.fixture
def ticking_clock(monkeypatch):
    """The monitor's clock advances by exactly one second per reading: a step's elapsed time is 1 s."""
    ticks = itertools.count()
    monkeypatch.setattr(monitor, "time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))


@pytest.mark.parametrize("packing", [False, True])
def test_tokens_per_second_and_peak_memory_once_per_optimizer_step(tmp_path, tiny_spec, ticking_clock, packing):
    logger, counted = Recorder(), StepTokens(accumulate=2)
    trainer = cpu_trainer(tmp_path, max_steps=3, accumulate_grad_batches=2, logger=logger, log_every_n_steps=1,
                          callbacks=[counted, TrainingMonitor()])  # fmt: skip
    trainer.fit(module(tiny_spec, peft=LoRA(r=4, dropout=0.0)), datamodule(tiny_spec, batch_size=2, packing=packing))
    rates = logger.values("train/tokens_per_sec")
    assert rates == counted.steps() and len(rates) == 3  # one per step: all its micro-batches, padding left out
    peaks = logger.values("train/peak_memory_gb")
    assert len(peaks) == 3 and 0 < peaks[0] <= peaks[1] <= peaks[2] <= peak_memory_bytes(torch.device("cpu")) / 2**30


def test_prompt_batches_count_their_prompt_tokens_summed_over_ranks(ticking_clock):
    """A PPO batch (manual optimisation: several optimizer steps in one batch) on 2 ranks, each of which counts 5."""
    reductions = []

    def reduce(value, reduce_op):
        reductions.append(reduce_op)
        return value * 2 if reduce_op == "sum" else value  # the other rank holds as many tokens

    strategy = SimpleNamespace(root_device=torch.device("cpu"), reduce=reduce)
    trainer = SimpleNamespace(global_step=0, world_size=2, strategy=strategy)
    logged = {}
    pl_module = SimpleNamespace(log=lambda name, value, **kwargs: logged.setdefault(name, value))
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])  # 5 prompt tokens, 1 left pad
    batch = PromptBatch(input_ids=torch.zeros(2, 3, dtype=torch.long), attention_mask=mask, index=torch.tensor([0, 1]),
                        references=["", ""])  # fmt: skip
    callback = TrainingMonitor()
    callback.on_train_batch_start(trainer, pl_module, batch, 0)
    trainer.global_step = 4  # the rollout's PPO epochs stepped the optimizer
    callback.on_train_batch_end(trainer, pl_module, None, batch, 0)
    assert logged["train/tokens_per_sec"] == 10.0 and reductions == ["sum", "max"]
    assert logged["train/peak_memory_gb"] > 0
