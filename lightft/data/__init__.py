"""Data: sources, formats, chat templates and masks, batching (padding, packing, planning), the datamodule."""

from lightft.data.datamodule import SFTDataModule
from lightft.data.sources import DatasetSpec

__all__ = ["DatasetSpec", "SFTDataModule"]
