"""PreferenceDataModule: preference pairs (reward models, DPO family) or unpaired examples (KTO).

Each micro-batch holds `batch_size` pairs as 2 x `batch_size` rows (chosen, then rejected) so both sides go through
the model in one forward pass (`PairBatch`); unpaired batches add KTO's mismatched rows (`UnpairedBatch`). The planner
normalises by pairs: every micro-batch carries the number of pairs in its whole optimizer step (`normaliser`).
Which of the two the data gives (`batch_type`) is known once a split is encoded; before that (config-time checks) it
is read from the first configured split's columns.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import Dataset

from lightft.data.base import KEY, Sources, TokenDataModule
from lightft.data.batches import PairBatch, UnpairedBatch
from lightft.data.collate import PairCollator, UnpairedCollator
from lightft.data.datasets import ExampleDataset
from lightft.data.pipeline import formatted_rows
from lightft.data.preference import PAIRED_FORMATS, PREFERENCE_FORMATS, encode_preferences
from lightft.data.templates import Truncation
from lightft.errors import LightFTError


class PreferenceDataModule(TokenDataModule):
    """Preference data: pairs (`prompt`/`chosen`/`rejected`, or `chosen`/`rejected`) or KTO's unpaired examples.

    TRL's field names; values are plain strings or lists of messages. Unpaired rows are `prompt`/`completion`/
    `label` (true = desirable).

    Args:
        train: Training pairs: a path or Hub name, or a full `DatasetSpec` (format, columns, split, ...).
        val: Validation pairs. Alternatively set `val_fraction`.
        truncation: Longer sequences: `right` keeps the start, `left` keeps the end, `drop` discards the pair.
        **kwargs: `val_fraction`, `test`, `tokenizer`, `max_length` (prompt + completion, per side), `batch_size`
            (pairs, or unpaired examples), `group_by_length`, `num_workers`, `seed`: see `TokenDataModule`.
    """

    def __init__(
        self,
        train: Sources = None,
        val: Sources = None,
        *,
        truncation: Truncation = "right",
        **kwargs: Any,
    ) -> None:
        super().__init__(train=train, val=val, **kwargs)
        self.truncation = truncation
        self.paired: dict[str, bool] = {}  # split -> whether it holds pairs, once encoded

    def encode(self, name: str, report: bool = True) -> Any:
        """Encoded pairs (or unpaired examples) of split `name`."""
        spec = self.specs[name]
        encoded, stats, paired = encode_preferences(
            spec, f"{KEY}.{name}", self.load_tokenizer(), self.max_length, self.truncation, self.num_proc
        )
        kinds = set(self.paired.values()) | {paired}
        if len(kinds) > 1:
            raise LightFTError(f"{KEY}.{name} ({spec.path}): mixes paired and unpaired (KTO) data with other splits.")
        self.paired[name] = paired
        self.stats[name] = stats
        if report:
            rank_zero_info(stats.summary(f"{name} ({spec.path})", "pairs" if paired else "examples"))
        return encoded

    def batch_type(self) -> type[PairBatch | UnpairedBatch]:
        """`PairBatch` for chosen/rejected pairs, `UnpairedBatch` for unpaired (KTO) rows.

        Known once a split is encoded; before that (config-time checks) this reads the first configured split (its
        columns and format, no tokenizing).
        """
        if self.paired:
            paired = next(iter(self.paired.values()))
        else:
            name = next((n for n, spec in self.specs.items() if spec is not None), None)
            if name is None:
                raise LightFTError(f"{KEY}.train: no preference data configured; set data.init_args.train.")
            _, fmt, _ = formatted_rows(self.specs[name], f"{KEY}.{name}", PREFERENCE_FORMATS)
            paired = fmt in PAIRED_FORMATS
        return PairBatch if paired else UnpairedBatch

    def make_dataset(self, rows: Any) -> Dataset:
        """One item per pair (or unpaired example)."""
        return ExampleDataset(rows)

    def collator(self, name: str) -> Any:
        """Chosen and rejected rows in one batch, or unpaired rows plus KTO's mismatched rows."""
        pad = self.load_tokenizer().pad_token_id
        return PairCollator(pad) if self.batch_type() is PairBatch else UnpairedCollator(pad)
