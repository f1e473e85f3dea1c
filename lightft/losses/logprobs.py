"""Per-token and per-sequence log-probabilities, entropy, and masked statistics shared by the RL and preference losses.

Log-probs are gathered logits minus a logsumexp taken one batch row at a time, so a bf16 (B, T, V) tensor is never
upcast whole: the extra float32 memory is one row, (T, V).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightft.losses.sft import IGNORE_INDEX


def token_logprobs(logits: Tensor, labels: Tensor) -> Tensor:
    """Log-probability of each next label under the logits, 0 where the label is IGNORE_INDEX.

    Args:
        logits: (B, T, V) next-token logits.
        labels: (B, T) token ids aligned with the inputs; IGNORE_INDEX where no loss.

    Returns:
        (B, T-1) float32: log p(labels[:, t+1] | tokens_<=t) at trained positions, 0.0 elsewhere.
    """
    shift_logits = logits[:, :-1]  # (B, T-1, V), a view
    shift_labels = labels[:, 1:]  # (B, T-1)
    mask = shift_labels != IGNORE_INDEX
    safe_labels = shift_labels.masked_fill(~mask, 0)  # any valid id; those positions are zeroed below
    picked = shift_logits.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1).float()  # (B, T-1)
    lse = torch.stack([torch.logsumexp(row.float(), dim=-1) for row in shift_logits])  # (B, T-1)
    return torch.where(mask, picked - lse, 0.0)


def sequence_logprobs(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Summed log-probability of each sequence's trained tokens, and how many there are.

    Args:
        logits: (B, T, V) next-token logits.
        labels: (B, T) token ids; IGNORE_INDEX where no loss (prompt, padding).

    Returns:
        (logps_sum, n_tokens): (B,) float32 and (B,) long.
    """
    logps = token_logprobs(logits, labels)  # (B, T-1)
    n_tokens = (labels[:, 1:] != IGNORE_INDEX).sum(dim=-1)
    return logps.sum(dim=-1), n_tokens


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the softmax over the last dimension, in float32, one batch row at a time.

    Args:
        logits: (B, T, V) logits.

    Returns:
        (B, T) float32 entropy, H = logsumexp(z) - sum softmax(z) * z.
    """
    return torch.stack([_row_entropy(row.float()) for row in logits])


def _row_entropy(logits: Tensor) -> Tensor:
    """(T, V) float32 logits -> (T,) entropy."""
    lse = torch.logsumexp(logits, dim=-1)  # (T,)
    probs = torch.softmax(logits, dim=-1)  # (T, V)
    finite = logits.clamp(min=torch.finfo(logits.dtype).min)  # a masked -inf logit has p = 0: 0 · -inf would be NaN
    return lse - (probs * finite).sum(dim=-1)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `values` over entries where `mask` is set (0 when none are).

    Args:
        values: tensor of any shape.
        mask: bool or 0/1 tensor of the same shape.
        dim: reduce over this dimension only; None reduces over all.

    Returns:
        sum(values * mask) / max(sum(mask), 1), a scalar or `values` without `dim`.
    """
    mask = mask.bool()
    kept = torch.where(mask, values, 0.0)  # not values * mask: a NaN or inf outside the mask must not leak in
    if dim is None:
        return kept.sum() / mask.sum().clamp(min=1)
    return kept.sum(dim=dim) / mask.sum(dim=dim).clamp(min=1)


def masked_whiten(values: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise `values` to mean 0 and variance 1 over the masked entries.

    Args:
        values: tensor of any shape.
        mask: bool or 0/1 tensor of the same shape.
        shift_mean: if False, add the mean back (only the scale changes).
        eps: added to the (biased) variance before the square root.

    Returns:
        Tensor shaped like `values`; 0 outside the mask.
    """
    mask = mask.bool()
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)  # unbiased=False
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask, whitened, 0.0)


__all__ = ["entropy_from_logits", "masked_mean", "masked_whiten", "sequence_logprobs", "token_logprobs"]
