"""PPO objectives on per-token tensors: the clipped policy loss, the clipped value loss and KL estimators.

All inputs are (B, T) over response tokens with a bool mask; means are taken over masked tokens of the whole batch.
Rollout quantities (old log-probs, old values, advantages, returns) are detached here.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lightft.losses.logprobs import masked_mean


def policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip_range: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Clipped surrogate policy loss, Schulman et al. 2017, https://arxiv.org/abs/1707.06347.

    ratio = exp(lp - old); pg = max(-A · ratio, -A · clip(ratio, 1-c, 1+c)).

    Args:
        logprobs: (B, T) log-probs of the sampled tokens under the current policy.
        old_logprobs: (B, T) the same under the policy that sampled them.
        advantages: (B, T) per-token advantages.
        mask: (B, T) bool, response tokens.
        clip_range: c.

    Returns:
        (loss, clipfrac, approx_kl): scalars; masked means of pg, of (clipped term > unclipped term), and of
        0.5 (lp - old)²; the last two detached.
    """
    advantages = advantages.detach()
    log_ratio = logprobs - old_logprobs.detach()  # (B, T)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
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
    term alone and the value keys are absent from the result.

    Args:
        clip_range: c for the probability ratio.
        clip_range_value: c for the value prediction.
        vf_coef: weight of the value loss.
    """

    def __init__(self, clip_range: float = 0.2, clip_range_value: float = 0.2, vf_coef: float = 0.1) -> None:
        if clip_range <= 0:
            raise ValueError(f"clip_range must be > 0, got {clip_range}")
        if clip_range_value <= 0:
            raise ValueError(f"clip_range_value must be > 0, got {clip_range_value}")
        if vf_coef < 0:
            raise ValueError(f"vf_coef must be >= 0, got {vf_coef}")
        self.clip_range, self.clip_range_value, self.vf_coef = clip_range, clip_range_value, vf_coef

    def __call__(
        self,
        logprobs: Tensor,
        old_logprobs: Tensor,
        advantages: Tensor,
        values: Tensor | None,
        old_values: Tensor | None,
        returns: Tensor | None,
        mask: Tensor,
    ) -> dict[str, Tensor]:
        """Loss and statistics of one minibatch.

        Returns:
            "loss", "policy_loss", "clipfrac", "approx_kl", and when values are given "value_loss", "value_clipfrac".
        """
        pg, clipfrac, approx_kl = policy_loss(logprobs, old_logprobs, advantages, mask, self.clip_range)
        out = {"loss": pg, "policy_loss": pg, "clipfrac": clipfrac, "approx_kl": approx_kl}
        if values is None:
            return out
        if old_values is None or returns is None:
            raise ValueError("PPOLoss needs old_values and returns when values are given")
        vf, value_clipfrac = value_loss(values, old_values, returns, mask, self.clip_range_value)
        out.update(loss=pg + self.vf_coef * vf, value_loss=vf, value_clipfrac=value_clipfrac)
        return out


__all__ = ["PPOLoss", "kl_penalty", "policy_loss", "value_loss"]
