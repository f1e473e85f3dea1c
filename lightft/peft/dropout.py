"""LoRA's input dropout fused with its A projection: y = A (x * mask / (1 - p)), keeping only a one-byte mask.

peft applies `lora_A(dropout(x))` in every adapted layer, so autograd keeps dropout's mask (on CPU the noise itself,
in the input's dtype) and the dropped copy of x that `lora_A` saves for its weight gradient: 2 x 4 bytes per input
element in fp32 (on CUDA 1 + 2 in bf16), per adapted layer — on SmolLM2 at 1,600 tokens about half the activations.
`FusedDropoutA` keeps the one-byte mask and the input x itself, which the frozen base layer saves anyway, and
recomputes the dropped input in backward. Written here because neither peft nor torch has it; the masks come from
the global generator (resume and activation checkpointing replay them).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _DropoutLinear(torch.autograd.Function):
    """(x, weight, p) -> (x * keep / (1 - p)) @ weight.T, saving x and the boolean `keep` mask."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, p: float) -> Tensor:
        drop = drop_mask(x.shape, p, x.device)  # (..., in) bool
        ctx.save_for_backward(x, weight, drop)
        ctx.scale = 1.0 / (1.0 - p)
        return F.linear(_dropped(x, drop, ctx.scale), weight)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        x, weight, drop = ctx.saved_tensors
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = _dropped(grad @ weight.to(grad.dtype), drop, ctx.scale)
        if ctx.needs_input_grad[1]:
            dropped = _dropped(x, drop, ctx.scale).reshape(-1, x.shape[-1])  # recomputed, freed after this line
            grad_weight = (grad.reshape(-1, grad.shape[-1]).T @ dropped.to(grad.dtype)).to(weight.dtype)
        return grad_x, grad_weight, None


def drop_mask(shape: torch.Size, p: float, device: torch.device) -> Tensor:
    """A boolean mask, True with probability p (rounded to 1/65536), from 16 random bits per entry.

    One 64-bit draw of the generator makes four entries: on CPU 3x faster than `torch.rand(shape) < p`, whose
    generation was a fifth of a SmolLM2 LoRA step.
    """
    n = math.prod(shape)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), 2**63 - 1)
    return (bits.view(torch.int16)[:n] < round(p * 65536) - 32768).view(shape)


def _dropped(x: Tensor, drop: Tensor, scale: float) -> Tensor:
    """The dropped entries of x zeroed, the kept ones scaled (one new tensor; the mask is not upcast)."""
    return x.masked_fill(drop, 0.0).mul_(scale)


class FusedDropoutA(nn.Linear):
    """LoRA's A projection with the adapter's input dropout inside (`p` in training mode, nothing in eval).

    The same parameters and state-dict keys as the `nn.Linear` it replaces, so checkpoints, peft's adapter files and
    merging are unchanged.
    """

    p: float = 0.0

    def forward(self, x: Tensor) -> Tensor:
        """A (dropout(x)); the bias-free A of LoRA."""
        if not self.training or self.p == 0.0:
            return F.linear(x, self.weight, self.bias)
        return _DropoutLinear.apply(x, self.weight, self.p)


def fuse_lora_dropout(model: nn.Module) -> int:
    """Replace every plain LoRA adapter's `lora_dropout` + `lora_A` pair by a `FusedDropoutA`; returns how many.

    Left alone: adapters without dropout, weight-decomposed ones (DoRA uses the dropped input twice), A layers that
    are not bias-free `nn.Linear`s (embeddings, convolutions).
    """
    fused = 0
    for module in model.modules():
        dropouts, projections = getattr(module, "lora_dropout", None), getattr(module, "lora_A", None)
        if not isinstance(dropouts, nn.ModuleDict) or not isinstance(projections, nn.ModuleDict):
            continue
        for name, dropout in dropouts.items():
            projection = projections[name] if name in projections else None  # noqa: SIM401 (ModuleDict has no get)
            plain = type(projection) is nn.Linear and projection.bias is None
            if type(dropout) is not nn.Dropout or not plain or name in getattr(module, "lora_variant", {}):
                continue
            projection.__class__ = FusedDropoutA  # keeps the very parameters (and their optimizer/FSDP identity)
            projection.p = float(dropout.p)
            dropouts[name] = nn.Identity()
            fused += 1
    return fused
