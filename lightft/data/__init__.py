"""Data: reading, formats, chat-template masks, batching (padding, packing, planning), typed batches, data modules.

One concept per file: `sources` (reading files / the Hub), `formats` (rows -> examples), `templates` (chat templates,
masks), `pipeline` and `preference` (encoding a split), `datasets` (what the planner samples from), `sampling` (the
batch planner), `collate` (items -> batches), `batches` (the batch types), `base` (what the data modules share),
`sft_datamodule`, `preference_datamodule`, `prompt_datamodule`.
"""

from lightft.data.base import TokenDataModule
from lightft.data.batches import Batch, PairBatch, PromptBatch, TokenBatch, UnpairedBatch
from lightft.data.preference_datamodule import PreferenceDataModule
from lightft.data.prompt_datamodule import PromptDataModule
from lightft.data.sft_datamodule import SFTDataModule
from lightft.data.sources import DatasetSpec

__all__ = [
    "Batch",
    "DatasetSpec",
    "PairBatch",
    "PreferenceDataModule",
    "PromptBatch",
    "PromptDataModule",
    "SFTDataModule",
    "TokenBatch",
    "TokenDataModule",
    "UnpairedBatch",
]
