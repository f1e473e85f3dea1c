"""Next-token cross entropy summed over trained tokens (SFT, and the NLL term of other objectives).

The module divides the sum by the number of trained tokens in the whole optimizer step (all micro-batches, all
ranks), which makes gradient accumulation and data parallelism exact; see `lightft.data.sampling`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100


def token_cross_entropy(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Sum of -log p(label_{t+1} | tokens_<=t) over trained positions, and the number of those positions.

    Args:
        logits: (B, T, V) next-token logits.
        labels: (B, T) token ids aligned with the inputs; IGNORE_INDEX where no loss.

    Returns:
        (loss_sum, n_tokens): a scalar in float32 and an integer scalar.
    """
    shift_labels = labels[:, 1:]  # (B, T-1)
    mask = shift_labels != IGNORE_INDEX
    picked = logits[:, :-1][mask].float()  # (N, V): only trained positions are upcast
    loss_sum = F.cross_entropy(picked, shift_labels[mask], reduction="sum")
    return loss_sum, mask.sum()


def mean_token_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean next-token cross entropy over trained positions (0 when there are none)."""
    loss_sum, n_tokens = token_cross_entropy(logits, labels)
    return loss_sum / n_tokens.clamp(min=1)


__all__ = ["IGNORE_INDEX", "mean_token_loss", "token_cross_entropy"]
