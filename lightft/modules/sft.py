"""SFTModule: supervised fine-tuning with next-token cross entropy on assistant / completion tokens.

The training loss of a micro-batch is its summed token loss divided by the trained tokens of the whole optimizer
step (all micro-batches on all ranks, counted by the batch planner), so gradients equal those of one big batch.
Validation/test report the token-weighted mean loss and perplexity; predict generates completions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import MeanMetric

from lightft.data import SFTDataModule
from lightft.data.batches import PromptBatch, TokenBatch
from lightft.generation import GenerationSettings, generate
from lightft.models.attention import check_packed_attention
from lightft.models.loading import ModelSpec
from lightft.modules.base import LightFTModule
from lightft.modules.method import Method


class SFTModule(LightFTModule):
    """Supervised fine-tuning.

    Args:
        model: Which pretrained model to start from (path, dtype, GGUF file, ...).
        generation: Sampling settings for `lightft predict`.
        **kwargs: `peft`, `optimizer`, `scheduler`, `gradient_checkpointing`, `compute`: see `LightFTModule`.
    """

    method = Method(data=SFTDataModule, batch=TokenBatch, validation_metrics=("val/loss", "val/ppl"))

    def __init__(
        self, model: ModelSpec, *, generation: GenerationSettings = GenerationSettings(), **kwargs: Any
    ) -> None:
        super().__init__(model, **kwargs)
        self.generation = generation
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self._packing_checked = False

    def forward(self, batch: TokenBatch) -> Tensor:
        """Next-token logits (B, T, V) of the batch (packed batches carry `position_ids` and no attention mask)."""
        return self.logits(batch)

    def on_train_batch_start(self, batch: TokenBatch, batch_idx: int) -> None:
        """Before the first packed batch, prove that this model keeps packed documents apart."""
        if batch.packed and not self._packing_checked:
            check_packed_attention(self.model, self.device)
            self._packing_checked = True

    def token_loss(self, batch: TokenBatch) -> tuple[Tensor, Tensor]:
        """(summed next-token cross entropy over the batch's trained tokens (each times its loss weight, when the
        data gives weights), their number).
        """  # noqa: D205
        logps = self.lm_logps(self.model, batch).logps
        if batch.weights is not None:  # position t predicts token t + 1, whose weight it takes
            return -(logps.logps * batch.weights[:, 1:].to(logps.logps.dtype)).sum(), logps.mask.sum()
        return -logps.total(), logps.mask.sum()

    def training_step(self, batch: TokenBatch, batch_idx: int) -> Tensor:
        """Summed token loss scaled so that the optimizer step sees sum(loss) / trained tokens in the step."""
        loss_sum, n_tokens = self.token_loss(batch)
        self.log("train/loss", loss_sum.detach() / n_tokens.clamp(min=1), prog_bar=True, batch_size=batch.size)
        return self.scaled(loss_sum, batch)

    def _eval_step(self, batch: TokenBatch, metric: MeanMetric, stage: str) -> None:
        loss_sum, n_tokens = self.token_loss(batch)
        if n_tokens > 0:
            metric.update(loss_sum / n_tokens, weight=n_tokens)
        self.log(f"{stage}/loss", metric, prog_bar=True, on_step=False, on_epoch=True, batch_size=batch.size)

    def validation_step(self, batch: TokenBatch, batch_idx: int) -> None:
        """Token-weighted mean loss over the whole validation set (all ranks)."""
        self._eval_step(batch, self.val_loss, "val")

    def test_step(self, batch: TokenBatch, batch_idx: int) -> None:
        """Token-weighted mean loss over the whole test set (all ranks)."""
        self._eval_step(batch, self.test_loss, "test")

    def on_validation_epoch_end(self) -> None:
        """Perplexity of the validation set."""
        if self.val_loss.update_called:
            # compute() already reduced over ranks, so every rank logs the same value; mean-syncing it is a no-op
            # that tells Lightning the epoch-level value is global
            self.log("val/ppl", torch.exp(self.val_loss.compute()), sync_dist=True)

    def predict_step(self, batch: PromptBatch, batch_idx: int) -> list[dict[str, Any]]:
        """Generate a completion per prompt: `{index, completion, reference}`."""
        assert self.model is not None
        texts = generate(self.model, self.tokenizer, batch.input_ids, batch.attention_mask, self.generation)
        return [
            {"index": int(i), "completion": text, "reference": ref}
            for i, text, ref in zip(batch.index, texts, batch.references, strict=True)
        ]
