"""SFTModule: supervised fine-tuning with next-token cross entropy on assistant / completion tokens.

The training loss of a micro-batch is its summed token loss divided by the trained tokens of the whole optimizer
step (all micro-batches on all ranks, counted by the batch planner), so gradients equal those of one big batch.
Validation/test report the token-weighted mean loss and perplexity; predict generates completions.
"""

from __future__ import annotations

from typing import Any

import torch
from jsonargparse import lazy_instance
from torch import Tensor
from torchmetrics import MeanMetric

from lightft.generation import GenerationSettings, generate
from lightft.models.attention import check_packed_attention
from lightft.models.forward import ComputeSettings
from lightft.models.loading import ModelSpec
from lightft.modules.base import LightFTModule
from lightft.optim import OptimizerConfig, SchedulerConfig
from lightft.peft.base import PEFTStrategy
from lightft.peft.lora import LoRA


class SFTModule(LightFTModule):
    """Supervised fine-tuning.

    Args:
        model: Which pretrained model to start from (path, dtype, GGUF file, ...).
        peft: How the model is made trainable: `lightft.peft.LoRA`, `QLoRA`, `FullFineTune`, or your own class.
        optimizer: Optimizer name and hyper-parameters.
        scheduler: Learning-rate schedule (linear warmup, then linear/cosine decay or constant).
        gradient_checkpointing: Recompute activations in the backward pass (non-reentrant) to save memory.
        generation: Sampling settings for `lightft predict`.
        compute: Chunked LM-head loss (default on), Liger kernels, activation offloading.
    """

    def __init__(
        self,
        model: ModelSpec,
        peft: PEFTStrategy = lazy_instance(LoRA),
        optimizer: OptimizerConfig = OptimizerConfig(),
        scheduler: SchedulerConfig = SchedulerConfig(),
        gradient_checkpointing: bool = True,
        generation: GenerationSettings = GenerationSettings(),
        compute: ComputeSettings = ComputeSettings(),
    ) -> None:
        super().__init__(model, peft, optimizer, scheduler, gradient_checkpointing, compute)
        self.generation = generation
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self._packing_checked = False

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Next-token logits (B, T, V) (generation, inspection; the losses never build them unless
        `compute.chunked_loss` is off); packed batches carry `position_ids` and no attention mask.
        """  # noqa: D205
        assert self.model is not None, "configure_model must run first"
        output = self.model(
            input_ids=batch["input_ids"],
            attention_mask=batch.get("attention_mask"),
            position_ids=batch.get("position_ids"),
            use_cache=False,
        )
        # prompt-style strategies prepend virtual tokens: the last T positions are the input's
        return output.logits[:, -batch["input_ids"].shape[1] :]

    def on_train_batch_start(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Before the first packed batch, prove that this model keeps packed documents apart."""
        if "position_ids" in batch and not self._packing_checked:
            check_packed_attention(self.model, self.device)
            self._packing_checked = True

    def token_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(summed next-token cross entropy over the batch's trained tokens, their number)."""
        logps = self.lm_logps(self.model, batch).logps
        return -logps.total(), logps.mask.sum()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Summed token loss scaled so that the optimizer step sees sum(loss) / trained tokens in the step."""
        loss_sum, n_tokens = self.token_loss(batch)
        self.log(
            "train/loss", loss_sum.detach() / n_tokens.clamp(min=1), prog_bar=True, batch_size=len(batch["labels"])
        )
        # Lightning divides by accumulate_grad_batches and DDP/FSDP average over ranks; undo both, divide by the step.
        scale = self.trainer.accumulate_grad_batches * self.trainer.world_size / batch["step_tokens"]
        return loss_sum * scale

    def _eval_step(self, batch: dict[str, Tensor], metric: MeanMetric, stage: str) -> None:
        loss_sum, n_tokens = self.token_loss(batch)
        if n_tokens > 0:
            metric.update(loss_sum / n_tokens, weight=n_tokens)
        self.log(f"{stage}/loss", metric, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(batch["labels"]))

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Token-weighted mean loss over the whole validation set (all ranks)."""
        self._eval_step(batch, self.val_loss, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Token-weighted mean loss over the whole test set (all ranks)."""
        self._eval_step(batch, self.test_loss, "test")

    def on_validation_epoch_end(self) -> None:
        """Perplexity of the validation set."""
        if self.val_loss.update_called:
            # compute() already reduced over ranks, so every rank logs the same value; mean-syncing it is a no-op
            # that tells Lightning the epoch-level value is global
            self.log("val/ppl", torch.exp(self.val_loss.compute()), sync_dist=True)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Generate a completion per prompt: `{index, completion, reference}`."""
        assert self.model is not None
        texts = generate(self.model, self.tokenizer, batch["input_ids"], batch["attention_mask"], self.generation)
        return [
            {"index": int(i), "completion": text, "reference": ref}
            for i, text, ref in zip(batch["index"], texts, batch["reference"], strict=True)
        ]
