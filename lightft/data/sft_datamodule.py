"""SFTDataModule: local files or Hub datasets -> tokenized, masked, optionally packed batches.

`prepare_data` (one process per node) reads and tokenizes every split into the `datasets` cache; `setup` (every
rank) reads the cache and builds the datasets; dataloaders batch by plan (see `lightft.data.sampling`): length
grouping, packing, and exact per-step token counts; `batch_size_unit` says whether `batch_size` counts rows,
examples or tokens. What every data module shares is `lightft.data.base.TokenDataModule`.
"""

from __future__ import annotations

from typing import Any, cast

from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from lightft.data.base import KEY, BatchSizeUnit, Sources, TokenDataModule, sources
from lightft.data.batches import TokenBatch
from lightft.data.collate import Collator, PromptCollator, pack_lengths
from lightft.data.datasets import PromptDataset, TokenDataset
from lightft.data.pipeline import encode_prompts, encode_split
from lightft.data.sources import DatasetSpec
from lightft.data.templates import Truncation
from lightft.errors import LightFTError


class SFTDataModule(TokenDataModule):
    """Supervised fine-tuning data.

    Args:
        train: Training data: a path or Hub name, or a full `DatasetSpec` (format, columns, split, ...).
        val: Validation data. Alternatively set `val_fraction`.
        predict: Prompts for `lightft predict` (the trained turns, if any, are written as references).
        truncation: Longer examples: `right` keeps the start, `left` keeps the end, `drop` discards them.
        packing: Concatenate examples into rows of `max_length`; documents never attend to each other.
        batch_size_unit: What `batch_size` counts. `rows`: sequences, or packed rows with packing (an epoch then
            takes fewer optimizer steps than unpacked). `examples`: examples; with packing each optimizer step is
            planned from examples exactly as unpacked, then packed, so the run takes the unpacked run's steps.
            `tokens`: at most `batch_size` tokens per micro-batch, padding included (at least `max_length`).
        **kwargs: `val_fraction`, `test`, `tokenizer`, `max_length`, `batch_size`, `group_by_length`,
            `num_workers`, `seed`: see `TokenDataModule`.
    """

    def __init__(
        self,
        train: Sources = None,
        val: Sources = None,
        *,
        predict: DatasetSpec | str | None = None,
        truncation: Truncation = "right",
        packing: bool = False,
        batch_size_unit: BatchSizeUnit = "rows",
        **kwargs: Any,
    ) -> None:
        super().__init__(train=train, val=val, **kwargs)
        self.specs["predict"] = sources(predict, f"{KEY}.predict", self.seed)
        self.truncation, self.packing = truncation, packing
        self.batch_size_unit = check_batch_size_unit(batch_size_unit, self.batch_size, self.max_length)

    def encode(self, name: str, report: bool = True) -> Any:
        """Token ids and labels (prompts for `predict`) of split `name`."""
        key = f"{KEY}.{name}"
        if name == "predict":
            return encode_prompts(self.specs[name], key, self.load_tokenizer(), self.max_length, self.num_proc)
        encoded, stats = encode_split(
            self.specs[name], key, self.load_tokenizer(), self.max_length, self.truncation, self.num_proc
        )
        self.stats[name] = stats
        if report:
            rank_zero_info(stats.summary(f"{name} ({self.specs[name].path})"))
        return encoded

    def make_dataset(self, rows: Any) -> Dataset:
        """Examples, packs of examples, or generation prompts."""
        if "prompt_ids" in rows.column_names:
            return PromptDataset(rows)
        by_step = self.batch_size_unit == "examples"  # the planner packs each step's examples instead
        packs = pack_lengths(rows["length"], self.max_length) if self.packing and not by_step else None
        return TokenDataset(rows, packs)

    def batch_type(self) -> type[TokenBatch]:
        """Token rows with labels (`predict` batches are `PromptBatch`es)."""
        return TokenBatch

    def _planning(self, name: str) -> dict[str, Any]:
        """Token budgets; packing by step when `batch_size` counts examples (not for `predict`'s prompts)."""
        if self.batch_size_unit == "tokens":
            return {"unit": "tokens"}
        if self.packing and self.batch_size_unit == "examples" and name != "predict":
            return {"pack_length": self.max_length}
        return {}

    def collator(self, name: str) -> Any:
        """Right padding (packed rows: position ids), left-padded prompts for `predict`."""
        pad = self.load_tokenizer().pad_token_id
        return PromptCollator(pad) if name == "predict" else Collator(pad)

    def predict_dataloader(self) -> DataLoader:
        """Left-padded prompt batches."""
        return self._loader("predict")


def check_batch_size_unit(unit: str, batch_size: int, max_length: int) -> BatchSizeUnit:
    """`unit` if it makes sense with `batch_size` and `max_length`; else a one-line LightFTError."""
    if unit not in ("rows", "examples", "tokens"):
        raise LightFTError(f"{KEY}.batch_size_unit: {unit!r} is not one of rows, examples, tokens.")
    if unit == "tokens" and batch_size < max_length:
        raise LightFTError(
            f"{KEY}.batch_size_unit: tokens makes batch_size the tokens per micro-batch, and {batch_size} is below "
            f"max_length {max_length} (one full row); set batch_size to a multiple of max_length, e.g. "
            f"{4 * max_length}, or use batch_size_unit: examples."
        )
    return cast(BatchSizeUnit, unit)
