"""DPOModule: direct preference optimisation and its family (IPO, cDPO/robust, hinge, SimPO, ORPO, KTO).

The loss is an injected object (`lightft.losses.preference`), chosen by `class_path`. The reference model is the
policy with its adapter disabled (PEFT: no second copy in memory), a frozen copy (full fine-tuning), or neither:
`reference: precomputed` computes the reference log-probs of every pair once before training (each rank its share,
summed across ranks) and keeps them in the checkpoint. Reference-free losses (SimPO, ORPO) skip it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from lightft.data.batches import PairBatch, UnpairedBatch
from lightft.data.preference_datamodule import PreferenceDataModule
from lightft.errors import LightFTError
from lightft.losses.logprobs import trained_counts
from lightft.losses.preference import DPOLoss, PairLogps, PreferenceLoss, PreferenceOutput, UnpairedLogps
from lightft.models.loading import ModelSpec, load_model
from lightft.modules.base import MODEL_KEY, LightFTModule, eval_means
from lightft.modules.method import Method
from lightft.peft.full import FullFineTune

Logps = PairLogps | UnpairedLogps
Batch = PairBatch | UnpairedBatch


class DPOModule(LightFTModule):
    """Preference optimisation against a reference model.

    Args:
        model: Which pretrained model to start from (path, dtype, GGUF file, ...).
        loss: The objective (default `lightft.losses.DPOLoss` with beta 0.1; cDPO / robust via its label smoothing),
            `IPOLoss`, `HingeLoss`, `SimPOLoss`, `ORPOLoss`, `KTOLoss` (unpaired data), or your own.
        reference: `live`: reference log-probs computed every step (adapter disabled, or a frozen copy for full
            fine-tuning); `precomputed`: computed once before training, no reference model during training.
        **kwargs: `peft`, `optimizer`, `scheduler`, `gradient_checkpointing`, `compute`: see `LightFTModule`.
    """

    method = Method(
        data=PreferenceDataModule,
        batch=PairBatch,
        rows_per_example=2,
        reference="adapter",
        validation_metrics=("val/loss", "val/accuracy", "val/margin"),
    )

    def __init__(
        self,
        model: ModelSpec,
        *,
        loss: PreferenceLoss | None = None,
        reference: Literal["live", "precomputed"] = "live",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.loss, self.reference = loss if loss is not None else DPOLoss(), reference
        if reference == "precomputed" and not self.loss.paired and not self.loss.reference_free:
            raise LightFTError(
                f"model.init_args.reference: {type(self.loss).__name__}'s mismatched KL rows change with every batch, "
                "so its reference cannot be precomputed; set reference: live."
            )
        self.reference_model: nn.Module | None = None
        self.reference_logps: dict[str, Tensor] = {}  # split -> (N, 2) precomputed (chosen, rejected) log-probs
        self.metrics = eval_means(("loss", "accuracy", "margin"))

    @property
    def uses_reference(self) -> bool:
        """Whether the loss compares against a reference model at all."""
        return not self.loss.reference_free

    def describe(self) -> Method:
        """Pairs or unpaired rows as the loss asks; the reference held while training: none (reference-free or
        precomputed), the disabled adapter, or a frozen copy (full fine-tuning).
        """  # noqa: D205
        method = super().describe()
        if not self.uses_reference or self.reference == "precomputed":
            reference = "none"
        else:
            reference = "frozen_copy" if isinstance(self.peft, FullFineTune) else "adapter"
        if self.loss.paired:
            return replace(method, reference=reference)
        metrics = method.validation_metrics  # unpaired rows (KTO): no pairs, so no accuracy or margin
        metrics = metrics and tuple(m for m in metrics if m not in ("val/accuracy", "val/margin"))
        return replace(method, batch=UnpairedBatch, reference=reference, validation_metrics=metrics)

    def configure_model(self) -> None:
        """The policy; for full fine-tuning with a live reference, also a frozen copy of the starting model."""
        if self.model is not None:
            return
        super().configure_model()
        if self.describe().reference == "frozen_copy":
            trainer = self.attached_trainer()
            precision = str(trainer.precision) if trainer is not None else self.trained_precision
            reference = load_model(self.model_spec, self.tokenizer, precision, key=MODEL_KEY)
            if self.qat is not None:  # the reference the policy starts equal to: fake-quantized the same way
                from lightft.quantization.qat import prepare

                prepare(reference, self.qat)
            self.reference_model = reference.requires_grad_(False).train(self.model.training)

    # ---- log-probabilities --------------------------------------------------------------------------------------

    def sequence_logps(self, model: nn.Module, batch: Batch) -> Logps:
        """Summed completion log-probs of every row of the batch under `model`."""
        token_logps = self.lm_logps(model, batch).logps  # only completion tokens reach the LM head
        logps, n_tokens = token_logps.sequence(), token_logps.n_tokens  # (2B,), (2B,)
        first, second = logps.chunk(2)
        if isinstance(batch, UnpairedBatch):
            return UnpairedLogps(logps=first, kl_logps=second, desirable=batch.desirable)
        n_first, n_second = n_tokens.chunk(2)
        return PairLogps(first, second, n_first, n_second, chosen_nll=-first / n_first.clamp(min=1))

    def _reference_context(self) -> AbstractContextManager[Any]:
        if self.reference_model is not None or isinstance(self.peft, FullFineTune):
            return nullcontext()  # full fine-tuning precomputes with the starting weights, before the first step
        return self.peft.disabled(self.model)

    @torch.no_grad()
    def live_reference_logps(self, batch: Batch) -> Logps:
        """The reference model's log-probs: the adapter disabled, or the frozen copy."""
        with self._reference_context():
            return self.sequence_logps(self.reference_model or self.model, batch)

    def reference_for(self, batch: Batch, split: str) -> Logps | None:
        """Reference log-probs of a batch: none (reference-free), looked up (precomputed) or computed (live).

        Precomputed pairs carry the batch's own token counts (the same sequences: length-normalised losses such as
        IPO average the reference side by them).
        """
        if not self.uses_reference:
            return None
        if self.reference == "live":
            return self.live_reference_logps(batch)
        cached = self.reference_logps[split].to(self.device)[batch.index]  # (B, 2)
        n_chosen, n_rejected = trained_counts(batch.labels).chunk(2)  # (B,), (B,)
        return PairLogps(cached[:, 0], cached[:, 1], n_chosen, n_rejected)

    # ---- steps --------------------------------------------------------------------------------------------------

    def compute_loss(self, batch: Batch, split: str) -> tuple[PreferenceOutput, Logps]:
        """The loss object's output on a batch, and the policy's log-probs (override to change the objective)."""
        policy = self.sequence_logps(self.model, batch)
        return self.loss(policy, self.reference_for(batch, split)), policy

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """Loss summed over pairs, scaled so the optimizer step sees the mean over all its pairs."""
        output, policy = self.compute_loss(batch, "train")
        size = len(output.losses)
        self.log("train/loss", output.losses.mean().detach(), prog_bar=True, batch_size=size)
        for name, value in preference_metrics(output, policy).items():
            self.log(name, value, prog_bar=name == "rewards/accuracies", batch_size=size)
        return self.scaled(output.losses.sum(), batch)

    def _eval_step(self, batch: Batch, stage: str) -> None:
        output, _ = self.compute_loss(batch, stage)
        values = {"loss": output.losses}
        if self.loss.paired:
            margins = output.chosen_rewards - output.rejected_rewards
            values.update(accuracy=(margins > 0).float(), margin=margins)
        self.log_eval_means(self.metrics, stage, values)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Loss, reward accuracy and mean reward margin over the validation pairs."""
        self._eval_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        """Loss, reward accuracy and mean reward margin over the test pairs."""
        self._eval_step(batch, "test")

    # ---- precomputed reference ----------------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        """With `reference: precomputed`, compute the reference log-probs of every split once (unless resumed)."""
        super().on_fit_start()
        if self.reference != "precomputed" or not self.uses_reference:
            return
        datamodule = self.trainer.datamodule
        for split in ("train", "val"):
            if split in getattr(datamodule, "datasets", {}) and split not in self.reference_logps:
                self.reference_logps[split] = self.precompute_reference(datamodule, split)

    @torch.no_grad()
    def precompute_reference(self, datamodule: Any, split: str) -> Tensor:
        """(N, 2) reference log-probs (chosen, rejected) of every pair of a split, identical on every rank."""
        world, rank = self.trainer.world_size, self.global_rank
        values = torch.zeros(len(datamodule.datasets[split]), 2, device=self.device)
        for batch in datamodule.ordered_dataloader(split, rank, world):
            batch = self.transfer_batch_to_device(batch, self.device, 0)
            reference = self.live_reference_logps(batch)
            mine = batch.index % world == rank  # padding batches (equal counts on every rank) repeat items
            pairs = torch.stack([reference.chosen, reference.rejected], dim=1).float()
            values[batch.index[mine]] = pairs[mine]
        if world > 1:
            values = self.trainer.strategy.reduce(values, reduce_op="sum")  # each pair was computed by one rank
        rank_zero_info(f"reference log-probs precomputed for {len(values)} {split} pairs")
        return values.cpu()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Trainable weights, plus the precomputed reference log-probs (the starting model is not kept)."""
        super().on_save_checkpoint(checkpoint)
        if self.reference_logps:
            checkpoint["reference_logps"] = dict(self.reference_logps)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore precomputed reference log-probs so a resumed run compares against the same reference."""
        super().on_load_checkpoint(checkpoint)
        self.reference_logps = dict(checkpoint.get("reference_logps", {}))


def preference_metrics(output: PreferenceOutput, policy: Logps) -> dict[str, Tensor]:
    """TRL's health metrics: implicit rewards, their margins and accuracy, and the policy's log-probs."""
    metrics: dict[str, Tensor] = {}
    if output.chosen_rewards.numel():
        metrics["rewards/chosen"] = output.chosen_rewards.mean()
    if output.rejected_rewards.numel():
        metrics["rewards/rejected"] = output.rejected_rewards.mean()
    if isinstance(policy, PairLogps):
        margins = output.chosen_rewards - output.rejected_rewards
        metrics["rewards/margins"] = margins.mean()
        metrics["rewards/accuracies"] = (margins > 0).float().mean()
        metrics["logps/chosen"] = policy.chosen.detach().mean()
        metrics["logps/rejected"] = policy.rejected.detach().mean()
    else:
        metrics["logps/completion"] = policy.logps.detach().mean()
    return metrics
