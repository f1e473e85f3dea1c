"""PPO objectives on per-token tensors: the clipped policy loss, the clipped value loss and KL estimators.

All inputs are (B, T) over response tokens with a bool mask. The value loss and the statistics are means over the
masked tokens of the batch; the policy loss (and GRPO's KL term) is reduced by `aggregate`, one of TRL's GRPO
`loss_type`s (`bnpo`, that same token mean, by default). Rollout quantities (old log-probs, old values, advantages,
returns) are detached here.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lightft.losses.logprobs import masked_mean

LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]
LOSS_TYPES: tuple[str, ...] = ("grpo", "bnpo", "dr_grpo", "dapo")
DAPO_CLIP_RANGE_HIGH = 0.28  # DAPO's clip-higher ε_high (ε_low = 0.2), Yu et al. 2025, https://arxiv.org/abs/2503.14476


def aggregate(
    per_token: Tensor,
    mask: Tensor,
    loss_type: LossType = "bnpo",
    max_length: int | None = None,
    num_tokens: float | Tensor | None = None,
) -> Tensor:
    """Reduce (B, T) per-token losses to a scalar, as TRL's `GRPOTrainer` does for each `loss_type`.

    With S the sum of the masked per-token losses of the batch and n_i the tokens of row i:

    - `grpo`: mean over rows of S_i / n_i (Shao et al. 2024): every response weighs the same, so a token of a short
      response weighs more than one of a long response (the length bias Dr. GRPO and DAPO remove).
    - `bnpo`: S / Σ n_i, the token mean over this batch (lightft's PPO and GRPO loss before loss types existed).
    - `dr_grpo`: S / (B · max_length), a constant normaliser (Liu et al. 2025, https://arxiv.org/abs/2503.20783).
    - `dapo`: S / num_tokens, the token mean over the whole rollout when this batch is one of its minibatches
      (Yu et al. 2025, https://arxiv.org/abs/2503.14476); num_tokens None: this batch's tokens, as `bnpo`.

    All four are linear in `per_token`, so aggregating a sum of per-token terms equals summing their aggregates.

    Args:
        per_token: (B, T) per-token losses.
        mask: (B, T) bool, response tokens.
        loss_type: `grpo`, `bnpo`, `dr_grpo` or `dapo`.
        max_length: the longest possible response (`max_new_tokens`), for `dr_grpo`.
        num_tokens: `dapo`'s normaliser: the rollout's response tokens times this batch's share of its rows.

    Returns:
        A scalar.
    """
    if loss_type == "bnpo" or (loss_type == "dapo" and num_tokens is None):
        return masked_mean(per_token, mask)
    if loss_type == "grpo":
        return masked_mean(per_token, mask, dim=-1).mean()
    kept = torch.where(mask.bool(), per_token, 0.0)
    if loss_type == "dr_grpo":
        if max_length is None or max_length < 1:
            raise ValueError(f"loss_type='dr_grpo' needs max_length >= 1, got {max_length}")
        return kept.sum() / (per_token.shape[0] * max_length)
    if loss_type == "dapo":
        return kept.sum() / torch.as_tensor(num_tokens, dtype=kept.dtype, device=kept.device).clamp(min=1)
    raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {loss_type!r}")


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_range: float,
    *,
    clip_range_high: float | None = None,
    loss_type: LossType = "bnpo",
    max_length: int | None = None,
    num_tokens: float | Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Clipped surrogate policy loss, Schulman et al. 2017, https://arxiv.org/abs/1707.06347.

    ratio = exp(lp - old); pg = max(-A · ratio, -A · clip(ratio, 1 - c, 1 + c_high)), reduced by `aggregate`.
    c_high > c is DAPO's clip-higher: a positive-advantage token's ratio may grow further before it is clipped.

    Args:
        logprobs: (B, T) log-probs of the sampled tokens under the current policy.
        old_logprobs: (B, T) the same under the policy that sampled them.
        advantages: (B, T) per-token advantages.
        mask: (B, T) bool, response tokens.
        clip_range: c, the lower clip (and the upper one when `clip_range_high` is None).
        clip_range_high: c_high, the upper clip; None: c (symmetric).
        loss_type: how pg is reduced over tokens and rows, see `aggregate`.
        max_length: `aggregate`'s max_length (`dr_grpo`).
        num_tokens: `aggregate`'s num_tokens (`dapo`).

    Returns:
        (loss, clipfrac, approx_kl): scalars; pg aggregated, and masked token means of (clipped term > unclipped
        term) and of 0.5 (lp - old)²; the last two detached.
    """
    high = clip_range if clip_range_high is None else clip_range_high
    advantages = advantages.detach()
    log_ratio = logprobs - old_logprobs.detach()  # (B, T)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + high)
    loss = aggregate(torch.max(unclipped, clipped), mask, loss_type, max_length, num_tokens)
    clipfrac = masked_mean((clipped > unclipped).float(), mask).detach()
    approx_kl = masked_mean(0.5 * log_ratio**2, mask).detach()
    return loss, clipfrac, approx_kl


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_range_value: float
) -> tuple[Tensor, Tensor]:
    """Clipped value loss: 0.5 · mean(max((v - R)², (old + clip(v - old, -c, c) - R)²)).

    Args:
        values: (B, T) current value predictions.
        old_values: (B, T) value predictions at rollout time.
        returns: (B, T) targets R.
        mask: (B, T) bool, response tokens.
        clip_range_value: c.

    Returns:
        (loss, clipfrac): scalars; clipfrac (the clipped term was larger) detached.
    """
    old_values, returns = old_values.detach(), returns.detach()
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    unclipped_loss = (values - returns) ** 2  # (B, T)
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_loss, clipped_loss), mask)
    clipfrac = masked_mean((clipped_loss > unclipped_loss).float(), mask).detach()
    return loss, clipfrac


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: Literal["k1", "k2", "k3"] = "k1") -> Tensor:
    """Per-token estimate of KL(policy || reference) from sampled tokens.

    k1 = lp - ref; k2 = 0.5 (lp - ref)²; k3 = exp(ref - lp) - 1 - (ref - lp), unbiased and >= 0.
    Schulman, "Approximating KL divergence", http://joschu.net/blog/kl-approx.html.

    Args:
        logprobs: (B, T) log-probs of the sampled tokens under the policy.
        ref_logprobs: (B, T) the same under the reference.
        estimator: which estimator, "k1", "k2" or "k3".

    Returns:
        (B, T) per-token KL estimates.
    """
    log_ratio = logprobs - ref_logprobs  # (B, T)
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"estimator must be 'k1', 'k2' or 'k3', got {estimator!r}")


class PPOLoss:
    """PPO loss: clipped policy surrogate plus vf_coef times the clipped value loss, https://arxiv.org/abs/1707.06347.

    All tensors are (B, T) with a bool mask over response tokens. Without values (GRPO, RLOO) the loss is the policy
    term alone and the value keys are absent from the result. The policy term is reduced by `aggregate` with
    `loss_type`; the value loss is always a token mean.

    Args:
        clip_range: c for the probability ratio (its lower clip, and the upper one unless `clip_range_high` is set).
        clip_range_value: c for the value prediction.
        vf_coef: weight of the value loss.
        clip_range_high: the ratio's upper clip; None: `clip_range`, or 0.28 (DAPO's clip-higher) for `dapo`.
        loss_type: `bnpo` (token mean over the minibatch, the default), `grpo`, `dr_grpo` or `dapo`: see `aggregate`.
        max_length: the longest possible response (`max_new_tokens`); needed by `dr_grpo`.
    """

    def __init__(
        self,
        clip_range: float = 0.2,
        clip_range_value: float = 0.2,
        vf_coef: float = 0.1,
        clip_range_high: float | None = None,
        loss_type: LossType = "bnpo",
        max_length: int | None = None,
    ) -> None:
        if clip_range <= 0:
            raise ValueError(f"clip_range must be > 0, got {clip_range}")
        if clip_range_value <= 0:
            raise ValueError(f"clip_range_value must be > 0, got {clip_range_value}")
        if vf_coef < 0:
            raise ValueError(f"vf_coef must be >= 0, got {vf_coef}")
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {loss_type!r}")
        if clip_range_high is None and loss_type == "dapo":
            clip_range_high = DAPO_CLIP_RANGE_HIGH
        if clip_range_high is not None and clip_range_high <= 0:
            raise ValueError(f"clip_range_high must be > 0, got {clip_range_high}")
        if loss_type == "dr_grpo" and (max_length is None or max_length < 1):
            raise ValueError(f"loss_type='dr_grpo' needs max_length >= 1, got {max_length}")
        self.clip_range, self.clip_range_value, self.vf_coef = clip_range, clip_range_value, vf_coef
        self.clip_range_high = clip_range if clip_range_high is None else clip_range_high
        self.loss_type, self.max_length = loss_type, max_length

    def aggregate(self, per_token: Tensor, mask: Tensor, num_tokens: float | Tensor | None = None) -> Tensor:
        """Reduce other per-token terms (GRPO's KL penalty) the way the policy term is: `aggregate` with `loss_type`."""
        return aggregate(per_token, mask, self.loss_type, self.max_length, num_tokens)

    def __call__(
        self,
        logprobs: Tensor,
        old_logprobs: Tensor,
        advantages: Tensor,
        values: Tensor | None,
        old_values: Tensor | None,
        returns: Tensor | None,
        mask: Tensor,
        num_tokens: float | Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Loss and statistics of one minibatch; `num_tokens` is `dapo`'s normaliser (see `aggregate`).

        Returns:
            "loss", "policy_loss", "clipfrac", "approx_kl", and when values are given "value_loss", "value_clipfrac".
        """
        pg, clipfrac, approx_kl = policy_loss(
            logprobs,
            old_logprobs,
            advantages,
            mask,
            self.clip_range,
            clip_range_high=self.clip_range_high,
            loss_type=self.loss_type,
            max_length=self.max_length,
            num_tokens=num_tokens,
        )
        out = {"loss": pg, "policy_loss": pg, "clipfrac": clipfrac, "approx_kl": approx_kl}
        if values is None:
            return out
        if old_values is None or returns is None:
            raise ValueError("PPOLoss needs old_values and returns when values are given")
        vf, value_clipfrac = value_loss(values, old_values, returns, mask, self.clip_range_value)
        out.update(loss=pg + self.vf_coef * vf, value_loss=vf, value_clipfrac=value_clipfrac)
        return out


__all__ = [
    "DAPO_CLIP_RANGE_HIGH",
    "LOSS_TYPES",
    "LossType",
    "PPOLoss",
    "aggregate",
    "kl_penalty",
    "policy_loss",
    "value_loss",
]
