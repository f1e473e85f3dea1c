"""Optimizers (torch AdamW, bitsandbytes 8-bit and paged AdamW) and warmup schedules (transformers' schedulers).

Weight decay applies to matrices only (biases, norms and other 1-D parameters are exempt), as in most LLM recipes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from transformers import get_scheduler

OptimizerName = Literal["adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"]
SchedulerName = Literal["linear", "cosine", "constant"]


@dataclass(frozen=True)
class OptimizerConfig:
    """Which optimizer and its hyper-parameters.

    Args:
        name: `adamw` (torch), `adamw_8bit`, `paged_adamw_8bit` or `paged_adamw_32bit` (bitsandbytes).
        lr: Peak learning rate.
        weight_decay: Decoupled weight decay, on matrices only.
        betas: Adam betas.
        eps: Adam epsilon.
    """

    name: OptimizerName = "adamw"
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


@dataclass(frozen=True)
class SchedulerConfig:
    """Learning-rate schedule over the run's optimizer steps.

    Args:
        name: `linear` or `cosine` decay to zero, or `constant`, each after a linear warmup.
        warmup_steps: Warmup length in optimizer steps; when None, `warmup_ratio` of all steps.
        warmup_ratio: Fraction of all optimizer steps spent warming up.
    """

    name: SchedulerName = "cosine"
    warmup_steps: int | None = None
    warmup_ratio: float = 0.0


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split into decayed (>= 2-D) and non-decayed groups."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(groups: Iterable[dict], config: OptimizerConfig) -> Optimizer:
    """Instantiate the optimizer named by `config`."""
    kwargs = {"lr": config.lr, "betas": config.betas, "eps": config.eps}
    if config.name == "adamw":
        return torch.optim.AdamW(groups, **kwargs)
    import bitsandbytes as bnb  # only when asked: bitsandbytes probes its native library on import

    classes = {
        "adamw_8bit": bnb.optim.AdamW8bit,
        "paged_adamw_8bit": bnb.optim.PagedAdamW8bit,
        "paged_adamw_32bit": bnb.optim.PagedAdamW32bit,
    }
    return classes[config.name](groups, **kwargs)


def build_scheduler(optimizer: Optimizer, config: SchedulerConfig, total_steps: int) -> LRScheduler:
    """Linear warmup then the named decay, over `total_steps` optimizer steps."""
    warmup = config.warmup_steps if config.warmup_steps is not None else round(config.warmup_ratio * total_steps)
    name = "constant_with_warmup" if config.name == "constant" else config.name
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
