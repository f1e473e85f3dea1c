"""A separable synthetic preference task for the tiny model: chosen answers use one vocabulary, rejected another."""

from __future__ import annotations

import random
from pathlib import Path

import lightning.pytorch as pl

from lightft import PreferenceDataModule
from lightft.data.sources import DatasetSpec
from tests.conftest import cpu_trainer, write_jsonl

GOOD = ["apple", "banana", "cherry", "grape", "lemon", "mango"]
BAD = ["zebra", "yak", "walrus", "vulture", "urchin", "tiger"]


def synthetic_pairs(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = f"Question {rng.randint(0, 999)}: name some things."
        rows.append(
            {
                "prompt": prompt,
                "chosen": " " + " ".join(rng.choices(GOOD, k=3)),
                "rejected": " " + " ".join(rng.choices(BAD, k=3)),
            }
        )
    return write_jsonl(path, rows)


def pair_data(tmp_path: Path, spec, n_train: int = 64, n_val: int = 32, batch_size: int = 8) -> PreferenceDataModule:
    return PreferenceDataModule(
        train=DatasetSpec(str(synthetic_pairs(tmp_path / "train.jsonl", n_train, 0))),
        val=DatasetSpec(str(synthetic_pairs(tmp_path / "val.jsonl", n_val, 1))),
        tokenizer=spec,
        max_length=64,
        batch_size=batch_size,
    )


def trainer(tmp_path: Path, **kwargs) -> pl.Trainer:
    """`cpu_trainer` without the sanity validation pass."""
    return cpu_trainer(tmp_path, **{"num_sanity_val_steps": 0, **kwargs})


class MetricLog(pl.Callback):
    """Every logged training metric, per optimizer step."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.steps.append({k: float(v) for k, v in trainer.callback_metrics.items()})
