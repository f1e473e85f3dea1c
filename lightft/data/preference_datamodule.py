"""PreferenceDataModule: preference pairs (reward models, DPO family) or unpaired examples (KTO).

Each micro-batch holds `batch_size` pairs as 2 x `batch_size` rows (chosen, then rejected) so both sides go through
the model in one forward pass; unpaired batches add KTO's mismatched rows. The planner normalises by pairs: every
micro-batch carries the number of pairs in its whole optimizer step (`step_items`).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import Dataset

from lightft.data.collate import ExampleDataset, PairCollator, UnpairedCollator
from lightft.data.datamodule import KEY, TokenDataModule
from lightft.data.pipeline import formatted_rows
from lightft.data.preference import PAIRED_FORMATS, PREFERENCE_FORMATS, encode_preferences
from lightft.data.sources import DatasetSpec
from lightft.data.templates import Truncation
from lightft.errors import LightFTError
from lightft.models.loading import ModelSpec


class PreferenceDataModule(TokenDataModule):
    """Preference data: pairs (`prompt`/`chosen`/`rejected`, or `chosen`/`rejected`) or KTO's unpaired examples.

    TRL's field names; values are plain strings or lists of messages. Unpaired rows are `prompt`/`completion`/
    `label` (true = desirable).

    Args:
        train: Training data: a path or Hub name, or a full `DatasetSpec` (format, columns, split, ...).
        val: Validation data. Alternatively set `val_fraction`.
        val_fraction: Hold out this fraction of `train` (seeded) for validation.
        test: Data for `lightft test`.
        tokenizer: Whose tokenizer to use; linked from `model.init_args.model` by the CLI.
        max_length: Longest sequence (prompt + completion) in tokens, per side.
        truncation: Longer sequences: `right` keeps the start, `left` keeps the end, `drop` discards the pair.
        batch_size: Pairs (or unpaired examples) per micro-batch per device.
        group_by_length: Batch pairs of similar length together (less padding).
        num_workers: DataLoader worker processes.
        seed: Seed for shuffling and the validation split.
    """

    def __init__(
        self,
        train: DatasetSpec | str | None = None,
        val: DatasetSpec | str | None = None,
        val_fraction: float = 0.0,
        test: DatasetSpec | str | None = None,
        tokenizer: ModelSpec | None = None,
        max_length: int = 1024,
        truncation: Truncation = "right",
        batch_size: int = 4,
        group_by_length: bool = True,
        num_workers: int = 0,
        seed: int = 42,
    ) -> None:
        specs = {"train": train, "val": val, "test": test}
        super().__init__(specs, val_fraction, tokenizer, max_length, batch_size, group_by_length, num_workers, seed)
        self.truncation = truncation
        self.paired: dict[str, bool] = {}

    def encode(self, name: str, report: bool = True) -> Any:
        """Encoded pairs (or unpaired examples) of split `name`."""
        spec = self.specs[name]
        encoded, stats, paired = encode_preferences(
            spec, f"{KEY}.{name}", self.tokenizer, self.max_length, self.truncation
        )
        kinds = set(self.paired.values()) | {paired}
        if len(kinds) > 1:
            raise LightFTError(f"{KEY}.{name} ({spec.path}): mixes paired and unpaired (KTO) data with other splits.")
        self.paired[name] = paired
        self.stats[name] = stats
        if report:
            rank_zero_info(stats.summary(f"{name} ({spec.path})", "pairs" if paired else "examples"))
        return encoded

    @property
    def is_paired(self) -> bool:
        """True for chosen/rejected pairs, False for unpaired (KTO) data; known once a split is encoded."""
        if self.paired:
            return next(iter(self.paired.values()))
        name = next((n for n, spec in self.specs.items() if spec is not None), None)
        if name is None:
            raise LightFTError(f"{KEY}.train: no preference data configured; set data.init_args.train.")
        _, fmt, _ = formatted_rows(self.specs[name], f"{KEY}.{name}", PREFERENCE_FORMATS)  # reads, no tokenizing
        return fmt in PAIRED_FORMATS

    def make_dataset(self, rows: Any) -> Dataset:
        """One item per pair (or unpaired example)."""
        return ExampleDataset(rows)

    def collator(self, name: str) -> Any:
        """Chosen and rejected rows in one batch, or unpaired rows plus KTO's mismatched rows."""
        pad = self.tokenizer.pad_token_id
        return PairCollator(pad) if self.is_paired else UnpairedCollator(pad)
