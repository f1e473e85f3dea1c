"""Per-token and per-sequence log-probabilities, entropy, and masked statistics shared by every method's loss.

Two ways in. From logits: gathered logits minus a logsumexp taken one batch row at a time, so a bf16 (B, T, V)
tensor is never upcast whole. From hidden states (`head_logprobs`, the default path of the modules): only the
trained positions go through the LM head, a chunk of positions at a time, each chunk's logits recomputed in backward,
so no (tokens x vocabulary) tensor ever exists; the extra memory is one chunk's logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from lightft.losses.sft import IGNORE_INDEX

CHUNK_ELEMENTS = 2**24  # `chunk_size=0`: positions per chunk so that a chunk's logits hold ~16M values (64 MiB fp32)


@dataclass(frozen=True)
class TokenLogps:
    """Next-token log-probabilities of a batch at its trained positions (position t predicts token t + 1).

    Attributes:
        logps: (B, T-1) float32 log p(labels[:, t+1] | tokens <= t); 0.0 where not trained.
        mask: (B, T-1) bool, the trained positions.
        entropy: (B, T-1) float32 entropy of the next-token distribution at trained positions (0.0 elsewhere), when
            asked for.
    """

    logps: Tensor
    mask: Tensor
    entropy: Tensor | None = None

    @property
    def n_tokens(self) -> Tensor:
        """(B,) trained positions per row."""
        return self.mask.sum(-1)

    def sequence(self) -> Tensor:
        """(B,) summed log-probs of each row's trained tokens."""
        return self.logps.sum(-1)

    def total(self) -> Tensor:
        """Scalar sum over the batch (minus the summed cross entropy)."""
        return self.logps.sum()


def trained_counts(labels: Tensor) -> Tensor:
    """(B,) trained positions per row of (B, T) labels: what `TokenLogps.n_tokens` counts, without a forward."""
    return (labels[:, 1:] != IGNORE_INDEX).sum(-1)


def logits_logprobs(logits: Tensor, labels: Tensor, entropy: bool = False) -> TokenLogps:
    """`TokenLogps` from full (B, T, V) logits (the unchunked path: `compute.chunked_loss: false`)."""
    mask = labels[:, 1:] != IGNORE_INDEX
    ent = torch.where(mask, entropy_from_logits(logits[:, :-1]), 0.0) if entropy else None
    return TokenLogps(token_logprobs(logits, labels), mask, ent)


def head_logprobs(
    hidden: Tensor,
    head: Callable[[Tensor], Tensor],
    labels: Tensor,
    chunk_size: int = 0,
    entropy: bool = False,
) -> TokenLogps:
    """`TokenLogps` from the backbone's final hidden states, the LM head applied to trained positions only.

    Prompt and padding positions never reach the head. The trained positions are taken `chunk_size` at a time; with
    gradients on, each chunk runs under non-reentrant activation checkpointing, so its logits are freed after the
    forward and recomputed in backward: peak memory is one chunk's logits and their float32 work, not (N, V).

    Args:
        hidden: (B, T, H) final hidden states (after the last norm), aligned with `labels`.
        head: Maps (n, H) hidden states to (n, V) logits (the model's output layer, soft-capping included).
        labels: (B, T) token ids; IGNORE_INDEX where no loss.
        chunk_size: Positions per chunk; 0 picks `CHUNK_ELEMENTS // V`.
        entropy: Also compute the entropy of each trained position's distribution.

    Returns:
        TokenLogps with (B, T-1) float32 log-probs, 0.0 at untrained positions.
    """
    states, targets, mask = trained_positions(hidden, labels)
    size = chunk_size or max(1, CHUNK_ELEMENTS // _vocab_size(head))
    run = partial(checkpoint, _chunk_logprobs, use_reentrant=False) if torch.is_grad_enabled() else _chunk_logprobs
    logps, entropies = [states.new_zeros(0, dtype=torch.float32)], [states.new_zeros(0, dtype=torch.float32)]
    for start in range(0, len(targets), size):
        chunk_logps, chunk_entropy = run(head, states[start : start + size], targets[start : start + size], entropy)
        logps.append(chunk_logps)
        entropies.append(chunk_entropy)
    return TokenLogps(scatter(torch.cat(logps), mask), mask, scatter(torch.cat(entropies), mask) if entropy else None)


def _chunk_logprobs(
    head: Callable[[Tensor], Tensor], states: Tensor, targets: Tensor, entropy: bool
) -> tuple[Tensor, Tensor]:
    """(n,) log-probs of `targets` and (n,) entropies (zeros unless asked) from (n, H) hidden states."""
    logits = head(states)  # (n, V): one chunk, in the model's dtype
    logps = _LogSoftmaxPick.apply(logits, targets)  # (n,) float32
    ent = _row_entropy(logits.float()) if entropy else torch.zeros_like(logps)
    return logps, ent


class _LogSoftmaxPick(torch.autograd.Function):
    """log_softmax(logits)[target] per row in float32, keeping one float32 (n, V) buffer in backward, not four.

    Autograd's own graph (upcast, logsumexp, gather, subtraction) holds the float32 logits, the exponentials and two
    gradient buffers at once; this computes the gradient (onehot - softmax) * g in place in one buffer.
    """

    @staticmethod
    def forward(ctx: Any, logits: Tensor, targets: Tensor) -> Tensor:
        lse = torch.logsumexp(logits.float(), dim=-1)  # (n,)
        picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1).float()
        ctx.save_for_backward(logits, targets, lse)
        return picked - lse

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        logits, targets, lse = ctx.saved_tensors
        probs = logits.float() if logits.dtype != torch.float32 else logits.clone()  # (n, V), the one buffer
        probs.sub_(lse.unsqueeze(-1)).exp_().mul_(-grad.unsqueeze(-1))  # -g * softmax
        probs.scatter_add_(-1, targets.unsqueeze(-1), grad.unsqueeze(-1).to(probs.dtype))  # + g at the target
        return probs.to(logits.dtype), None


def trained_positions(hidden: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(states (N, H), next-token targets (N,), mask (B, T-1)) of the positions whose next label is trained."""
    mask = labels[:, 1:] != IGNORE_INDEX  # (B, T-1)
    return hidden[:, :-1][mask], labels[:, 1:][mask], mask


def scatter(values: Tensor, mask: Tensor) -> Tensor:
    """(N,) values at the set positions of a (B, T) mask -> (B, T) float32, 0.0 elsewhere (differentiable)."""
    return torch.zeros(mask.shape, dtype=values.dtype, device=values.device).masked_scatter(mask, values)


def _vocab_size(head: Callable[[Tensor], Tensor]) -> int:
    """Output size of an LM head: `nn.Linear` (`out_features`) or lightft's `OutputHead` (`vocab_size`)."""
    size = getattr(head, "vocab_size", None) or getattr(head, "out_features", None)
    if size is None:
        raise TypeError(f"cannot tell the vocabulary size of {type(head).__name__}; give chunk_size")
    return int(size)


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


__all__ = [
    "TokenLogps",
    "entropy_from_logits",
    "head_logprobs",
    "logits_logprobs",
    "masked_mean",
    "masked_whiten",
    "sequence_logprobs",
    "token_logprobs",
]
