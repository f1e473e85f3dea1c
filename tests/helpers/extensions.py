"""A user's own extensions, named by class_path from the CLI in tests (as they would be from a user's package)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import BitsAndBytesConfig, PreTrainedModel

from lightft import DPOModule, LightFTModule, PreferenceDataModule, SFTModule
from lightft.data.batches import PairBatch, TokenBatch
from lightft.errors import LightFTError
from lightft.losses import token_cross_entropy
from lightft.losses.preference import PreferenceOutput
from lightft.models.loading import ModelSpec
from lightft.modules import Method


class ZLossSFT(SFTModule):
    """SFT plus PaLM's z-loss, 1e-4 * log(Z)^2 per trained token: a subclass overriding one method."""

    def training_step(self, batch: TokenBatch, batch_idx: int) -> Tensor:
        logits = self(batch)
        loss_sum, _ = token_cross_entropy(logits, batch.labels)
        trained = batch.labels[:, 1:] != -100
        z_sum = torch.logsumexp(logits[:, :-1][trained].float(), dim=-1).pow(2).sum()
        self.log("train/z_loss", z_sum.detach() / trained.sum().clamp(min=1))
        return self.scaled(loss_sum + 1e-4 * z_sum, batch)


class TrainLastLayers:
    """A user's PEFT strategy: train only the last `layers` decoder layers (and nothing else)."""

    prompt_style = False
    supports_gradient_checkpointing = True
    mergeable = True

    def __init__(self, layers: int = 1) -> None:
        self.layers = layers

    def quantization_config(self, compute_dtype: torch.dtype) -> BitsAndBytesConfig | None:
        return None

    def _names(self, model: nn.Module) -> list[str]:
        decoder = model.model.layers
        return [f"model.layers.{i}." for i in range(len(decoder) - self.layers, len(decoder))]

    def check(self, model: nn.Module) -> None:
        if len(model.model.layers) < self.layers:
            raise LightFTError(f"model.init_args.peft.init_args.layers: the model has only {len(model.model.layers)}.")

    def apply(self, model: PreTrainedModel) -> nn.Module:
        prefixes = self._names(model)
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith(tuple(prefixes)))
        return model

    def disabled(self, model: nn.Module) -> AbstractContextManager[None]:
        raise LightFTError("TrainLastLayers changes base weights; there is nothing to disable.")

    def trainable_state_dict(self, model: nn.Module) -> dict[str, Tensor]:
        return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    def merge(self, model: nn.Module) -> PreTrainedModel:
        return model  # type: ignore[return-value]

    def save(self, model: nn.Module, directory: Path) -> None:
        weights = {k: v.contiguous() for k, v in self.trainable_state_dict(model).items()}
        save_file(weights, Path(directory) / "layers.safetensors")

    def load(self, model: PreTrainedModel, directory: Path) -> nn.Module:
        model.load_state_dict(load_file(Path(directory) / "layers.safetensors"), strict=False)
        return self.apply(model)


class NLLRegularisedDPO(DPOModule):
    """DPO plus alpha x the chosen answer's mean token NLL (RPO, Pang et al. 2024): a subclass overriding the loss."""

    alpha = 1.0

    def compute_loss(self, batch: PairBatch, split: str) -> tuple[PreferenceOutput, Any]:
        output, policy = super().compute_loss(batch, split)
        self.log(f"{split}/chosen_nll", policy.chosen_nll.mean().detach(), batch_size=len(policy.chosen))
        losses = output.losses + self.alpha * policy.chosen_nll
        return PreferenceOutput(losses, output.chosen_rewards, output.rejected_rewards), policy


class PoisonedSFT(SFTModule):
    """SFT whose loss (`where: loss`) or one gradient (`where: grad`) is made non-finite at the listed optimizer
    steps (0-based global steps): what a bad batch or an exploding update looks like to the non-finite guard."""

    def __init__(self, *args: Any, poison: list[int] | None = None, where: str = "loss", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.poison, self.where = set(poison or []), where

    def training_step(self, batch: TokenBatch, batch_idx: int) -> Tensor:
        loss = super().training_step(batch, batch_idx)
        if self.where == "loss" and self.trainer.global_step in self.poison:
            loss = loss * float("nan")
        return loss

    def on_after_backward(self) -> None:
        if self.where == "grad" and self.trainer.global_step in self.poison:
            param = next(p for p in self.parameters() if p.grad is not None)
            param.grad[0] = float("inf")


class UnlikelihoodModule(LightFTModule):
    """A user's own method, declared on its class and nowhere else: next-token NLL on the chosen answers of
    preference pairs plus `alpha` x the unlikelihood loss -log(1 - p) of the rejected answers' tokens (Welleck et
    al. 2019). Chosen and rejected rows go through the model in one forward.
    """

    method = Method(data=PreferenceDataModule, batch=PairBatch, rows_per_example=2)

    def __init__(self, model: ModelSpec, *, alpha: float = 0.5, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.alpha = alpha

    def training_step(self, batch: PairBatch, batch_idx: int) -> Tensor:
        logps = self.lm_logps(self.model, batch).logps  # (2B, T-1)
        chosen, rejected = logps.sequence().chunk(2)
        reject_mask = logps.mask.chunk(2)[1]
        p = logps.logps.chunk(2)[1].exp().clamp(max=1 - 1e-6)
        unlikely = -(torch.log1p(-p) * reject_mask).sum(-1)  # (B,)
        losses = -chosen + self.alpha * unlikely
        self.log("train/loss", losses.mean().detach(), batch_size=batch.size)
        self.log("train/rejected_logps", rejected.mean().detach(), batch_size=batch.size)
        return self.scaled(losses.sum(), batch)


class UndeclaredModule(LightFTModule):
    """A method module that forgot its `method` declaration."""

    def training_step(self, batch: TokenBatch, batch_idx: int) -> Tensor:
        return self.lm_logps(self.model, batch).logps.total()


class BrokenReward:
    """A user's reward function with a bug: it raises."""

    def __call__(self, prompts: list[str], completions: list[str], references: list[str]) -> list[float]:
        return [float(c.split()[0]) for c in completions]  # ValueError on any non-numeric first word


class ShortReward:
    """A user's reward function that scores only the first completion."""

    def __call__(self, prompts: list[str], completions: list[str], references: list[str]) -> list[float]:
        return [1.0]


class MisnamedReward:
    """A reward function whose `__call__` does not take the protocol's arguments."""

    def __call__(self, texts: list[str]) -> list[float]:
        return [0.0] * len(texts)
