"""What the strategy presets share.

The decoder layers they shard, wrap and checkpoint, which kind of strategy a trainer runs, its ZeRO stage, and the
check that a checkpoint holds the weights a model trains.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from torch import nn

from lightft.errors import LightFTError

KEY = "trainer.strategy"
DTypeName = Literal["float32", "bfloat16", "float16"]


def decoder_layer_classes(module: nn.Module) -> set[type[nn.Module]]:
    """Classes of the repeated transformer blocks inside `module`: the units to shard, wrap and checkpoint."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    classes = {type(m) for m in module.modules() if isinstance(m, GradientCheckpointingLayer)}
    if classes:
        return classes
    names = {n for m in module.modules() for n in (getattr(m, "_no_split_modules", None) or [])}
    return {type(m) for m in module.modules() if type(m).__name__ in names}


def decoder_layers(module: nn.Module) -> list[nn.Module]:
    """Every decoder-layer instance inside `module`, outermost first (nested matches are skipped)."""
    classes = tuple(decoder_layer_classes(module))
    found: list[nn.Module] = []
    inside: set[int] = set()
    for m in module.modules():
        if id(m) in inside:
            continue
        if classes and isinstance(m, classes):
            found.append(m)
            inside.update(id(s) for s in m.modules())
    return found


def is_trainable_leaf(module: nn.Module) -> bool:
    """A layer without children whose weight trains: LoRA's A/B, a value head; FSDP wraps it on its own."""
    weight = getattr(module, "weight", None)
    return next(module.children(), None) is None and isinstance(weight, nn.Parameter) and weight.requires_grad


def timeout(minutes: float) -> timedelta:
    """A preset's `timeout_minutes` as the `timedelta` Lightning's strategies take."""
    return timedelta(minutes=minutes)


def check_trainable_keys(module: nn.Module, saved: Any, path: Path | str) -> None:
    """Fail clearly when a checkpoint lacks weights `module` trains (written by another model or PEFT strategy)."""
    missing = {n for n, p in module.named_parameters() if p.requires_grad} - set(saved)
    if missing:
        raise LightFTError(
            f"--ckpt_path: {path} lacks {len(missing)} trainable weights of this model (e.g. {sorted(missing)[0]}); "
            "it was written by another model or PEFT strategy."
        )


def zero_stage(strategy: DeepSpeedStrategy) -> int:
    """The ZeRO stage a DeepSpeed strategy will run (its config, raw JSON included), 0 without ZeRO."""
    return int(strategy.config.get("zero_optimization", {}).get("stage", 0))


def strategy_kind(strategy: Any) -> str:
    """`single`, `ddp`, `fsdp`, `fsdp2` or `deepspeed` for a trainer's strategy object."""
    for kind, cls in (("fsdp2", ModelParallelStrategy), ("fsdp", FSDPStrategy), ("deepspeed", DeepSpeedStrategy)):
        if isinstance(strategy, cls):
            return kind
    return "ddp" if isinstance(strategy, DDPStrategy) else "single"
