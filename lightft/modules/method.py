"""What a training method tells the rest of lightft about itself: one declaration on its module class.

`compat`, `memory`, `estimate`, `doctor`, `export` and `bench` read a module's `describe()` (its class's `method`,
refined by the instance's settings) instead of testing class names, so a user's module named by `class_path`
is checked, estimated, exported and benched like a built-in one:

    class MyModule(LightFTModule):
        method = Method(data=SFTDataModule, batch=TokenBatch)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from lightft.data.batches import Batch
from lightft.models.loading import Head

Reference = Literal["none", "adapter", "frozen_copy"]


@dataclass(frozen=True)
class Method:
    """A training method's declaration.

    Args:
        data: The data module class it trains on (subclasses accepted); None accepts any.
        batch: The batch type its steps consume (`lightft.data.batches`).
        rows_per_example: Rows one example puts through the model in a forward pass (pairs: chosen + rejected = 2;
            unpaired KTO rows: the example and its mismatched KL row = 2).
        lm_logps: Whether its loss reads next-token log-probs through the LM head (`compute.chunked_loss` applies);
            False for a scalar head.
        reference: What it keeps as the reference model while training: `none`, `adapter` (the policy with its
            adapter disabled: no extra memory) or `frozen_copy` (a second copy of the model's weights).
        rollout: Whether it samples responses every step (PPO/GRPO): generation under the strategy, a rollout's
            memory, a reward function.
        head: What is loaded, trained and exported: a causal LM, or the backbone with a scalar head (`reward`).
        validation_metrics: The metrics its validation logs: what `--early_stopping.monitor` and `--best.monitor`
            may name (checked before a fit starts); None: not declared (a monitor is checked at the first
            validation instead).
    """

    data: type | None
    batch: type[Batch]
    rows_per_example: int = 1
    lm_logps: bool = True
    reference: Reference = "none"
    rollout: bool = False
    head: Head = "causal_lm"
    validation_metrics: tuple[str, ...] | None = None

    def data_error(self, module: str, datamodule: Any) -> str | None:
        """Why `datamodule` cannot feed this method (the message names the key and the fix), or None."""
        if datamodule is None or self.data is None:
            return None
        batch_type = getattr(datamodule, "batch_type", None)
        if not isinstance(datamodule, self.data):
            return f"data.class_path: {module} trains on {self.data.__name__}; use {_path(self.data)}."
        produced = batch_type() if callable(batch_type) else None
        if produced is not None and not issubclass(produced, self.batch):
            return (
                f"data.init_args.train: {module} trains on {_describe(self.batch)}, this data gives "
                f"{_describe(produced)}; give such data."
            )
        return None


def _path(cls: type) -> str:
    module = cls.__module__
    return f"lightft.{cls.__name__}" if module.startswith("lightft.") else f"{module}.{cls.__qualname__}"


def _describe(batch: type) -> str:
    return getattr(batch, "what", batch.__name__)
