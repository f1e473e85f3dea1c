"""RewardModelModule: a scalar reward model trained on preference pairs with the Bradley-Terry loss.

The model is the backbone with a scalar head read at each sequence's last token (transformers'
`*ForSequenceClassification` with one label), so an exported reward model loads in transformers, TRL and lightft.
Chosen and rejected go through the model in one forward pass; the head always trains and is saved with the adapter.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lightft.data.batches import PairBatch
from lightft.data.preference_datamodule import PreferenceDataModule
from lightft.losses.reward import BradleyTerryLoss
from lightft.models.loading import ModelSpec
from lightft.modules.base import LightFTModule, eval_means
from lightft.modules.method import Method

HEAD_NAME = "score"  # transformers' name of the sequence-classification head


class RewardModelModule(LightFTModule):
    """Reward model training on chosen/rejected pairs.

    Args:
        model: Which pretrained model to start from (path, dtype, GGUF file, ...); a scalar head is added.
        loss: The pairwise loss (default: Bradley-Terry; set `center_rewards_coefficient` for reward centering); a
            data column `margin` is used as the required margin when present.
        **kwargs: `peft` (the head always trains), `optimizer`, `scheduler`, `gradient_checkpointing`, `compute`
            (a reward model has no LM head, so no chunked loss): see `LightFTModule`.
    """

    method = Method(
        data=PreferenceDataModule,
        batch=PairBatch,
        rows_per_example=2,
        lm_logps=False,
        head="reward",
        validation_metrics=("val/loss", "val/accuracy", "val/margin"),
    )

    def __init__(self, model: ModelSpec, *, loss: BradleyTerryLoss | None = None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.loss = loss if loss is not None else BradleyTerryLoss()
        self.metrics = eval_means(("loss", "accuracy", "margin"))

    def build_model(self, quantize: bool = True) -> nn.Module:
        """The PEFT-wrapped backbone with its scalar head trainable, whatever the strategy."""
        model = super().build_model(quantize)
        head = [p for n, p in model.named_parameters() if _is_head(n)]
        if not any(p.requires_grad for p in head):
            for param in head:
                param.requires_grad_(True)
        return model

    def forward(self, batch: PairBatch) -> Tensor:
        """Rewards (2B,) of the batch's rows: chosen rows first, then rejected."""
        assert self.model is not None, "configure_model must run first"
        with self.saved_activations():
            output = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        return output.logits.squeeze(-1).float()

    def _pair_step(self, batch: PairBatch) -> tuple[Tensor, Tensor]:
        chosen, rejected = self(batch).chunk(2)  # (B,), (B,)
        return self.loss(chosen, rejected, batch.margin), chosen - rejected

    def training_step(self, batch: PairBatch, batch_idx: int) -> Tensor:
        """Pairwise loss summed over pairs, scaled so the optimizer step sees the mean over all its pairs."""
        losses, margins = self._pair_step(batch)
        size = len(losses)
        self.log("train/loss", losses.mean().detach(), prog_bar=True, batch_size=size)
        self.log("train/accuracy", (margins > 0).float().mean(), prog_bar=True, batch_size=size)
        self.log("train/margin", margins.mean().detach(), batch_size=size)
        return self.scaled(losses.sum(), batch)

    def _eval_step(self, batch: PairBatch, stage: str) -> None:
        losses, margins = self._pair_step(batch)
        self.log_eval_means(self.metrics, stage, {"loss": losses, "accuracy": (margins > 0).float(), "margin": margins})

    def validation_step(self, batch: PairBatch, batch_idx: int) -> None:
        """Loss, accuracy (chosen scored above rejected) and mean margin over the validation pairs."""
        self._eval_step(batch, "val")

    def test_step(self, batch: PairBatch, batch_idx: int) -> None:
        """Loss, accuracy and mean margin over the test pairs."""
        self._eval_step(batch, "test")


def _is_head(name: str) -> bool:
    parts = name.split(".")
    return HEAD_NAME in parts and "original_module" not in parts
