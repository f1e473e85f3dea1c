"""PromptDataModule: prompts for on-policy RL (PPO, GRPO), left-padded so generation starts where each row ends.

Reads prompt-only data (`prompt`: a string or a list of messages) or takes the prompt of any SFT or preference
format; the trained part, where there is one (`completion`, `chosen`, assistant turn), travels along in the
`PromptBatch`'s `references`, passed to reward functions (e.g. a verifiable answer).
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from lightft.data.base import KEY, Sources, TokenDataModule
from lightft.data.batch_report import BatchReport
from lightft.data.batches import PromptBatch
from lightft.data.collate import PromptCollator
from lightft.data.datasets import PromptDataset
from lightft.data.pipeline import encode_prompts
from lightft.data.sampling import PlannedBatchSampler


class PromptDataModule(TokenDataModule):
    """Prompts for rollouts.

    Args:
        train: Training prompts: a path or Hub name, or a full `DatasetSpec` (format, columns, split, ...).
        val: Validation prompts. Alternatively set `val_fraction`.
        max_prompt_length: Longest prompt in tokens (longer prompts keep their end).
        batch_size: Prompts per rollout per device.
        **kwargs: `val_fraction`, `tokenizer`, `num_workers`, `seed`: see `TokenDataModule`.
    """

    def __init__(
        self,
        train: Sources = None,
        val: Sources = None,
        *,
        max_prompt_length: int = 512,
        batch_size: int = 8,
        **kwargs: Any,
    ) -> None:
        # no test split (rollouts have no test step); prompts of every length go together
        super().__init__(train=train, val=val, test=None, max_length=max_prompt_length, batch_size=batch_size,
                         group_by_length=False, **kwargs)  # fmt: skip

    def encode(self, name: str, report: bool = True) -> Any:
        """Prompt ids and reference texts of split `name`."""
        return encode_prompts(self.specs[name], f"{KEY}.{name}", self.load_tokenizer(), self.max_length, self.num_proc)

    def make_dataset(self, rows: Any) -> Dataset:
        """One item per prompt."""
        return PromptDataset(rows)

    def batch_type(self) -> type[PromptBatch]:
        """Left-padded prompts."""
        return PromptBatch

    def collator(self, name: str) -> Any:
        """Left-padded prompts with their row index and reference."""
        return PromptCollator(self.load_tokenizer().pad_token_id)

    def _batch_report(self, sampler: PlannedBatchSampler, dataset: Any) -> BatchReport | None:
        """None: PPO/GRPO step the optimizer per rollout minibatch, not per loader batch (see `PPOModule`)."""
        return None
