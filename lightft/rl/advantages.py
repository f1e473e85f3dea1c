"""Advantage estimation and KL-coefficient control for on-policy RL (PPO, GRPO).

Per-token tensors are (B, T) over response tokens, with a bool mask that is contiguous from t = 0 and may end early.
Everything here produces training targets, so inputs are detached.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightft.losses.logprobs import masked_whiten


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation, Schulman et al. 2015, https://arxiv.org/abs/1506.02438.

    δ_t = r_t + γ V_{t+1} m_{t+1} - V_t;  A_t = δ_t + γλ A_{t+1} m_{t+1};  returns = A + V.

    Args:
        rewards: (B, T) per-token rewards (typically the score on the last token minus a per-token KL penalty).
        values: (B, T) value predictions.
        mask: (B, T) bool, response tokens.
        gamma: discount γ.
        lam: GAE λ.

    Returns:
        (advantages, returns), each (B, T), detached and 0 outside the mask.
    """
    mask = mask.bool()
    rewards = rewards.detach().masked_fill(~mask, 0.0)  # padding may hold anything, NaN included
    values = values.detach().masked_fill(~mask, 0.0)
    next_value = torch.zeros_like(values[:, 0])  # (B,)
    next_advantage = torch.zeros_like(values[:, 0])
    advantages = torch.zeros_like(values)
    for t in reversed(range(values.shape[1])):
        # next_* are already 0 past the end of each row, since they were masked on the previous iteration
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_advantage) * mask[:, t]
        next_value, next_advantage = values[:, t], advantages[:, t]
    returns = torch.where(mask, advantages + values, 0.0)
    return advantages, returns


def whiten_advantages(advantages: Tensor, mask: Tensor) -> Tensor:
    """Advantages normalised to mean 0 and std 1 over the masked tokens of the batch; 0 outside the mask."""
    return masked_whiten(advantages, mask, shift_mean=True)


def group_advantages(rewards: Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> Tensor:
    """Group-relative advantages, GRPO (Shao et al. 2024), https://arxiv.org/abs/2402.03300.

    A_i = (r_i - mean(group)) / (std(group) + eps), std unbiased as in DeepSeekMath (and TRL's `scale_rewards="group"`);
    without `scale`, r_i - mean, as in Dr. GRPO (Liu et al. 2025, https://arxiv.org/abs/2503.20783), which drops the
    std division because it up-weights prompts nearly always or nearly never solved (TRL's `scale_rewards="none"`).

    Args:
        rewards: (N,) one scalar reward per completion, laid out as N / group_size consecutive groups of completions
            of the same prompt.
        group_size: completions per prompt.
        scale: divide by the group's standard deviation.
        eps: added to the standard deviation.

    Returns:
        (N,) advantages.
    """
    if group_size < 1 or (scale and group_size < 2):
        raise ValueError(f"group_size must be >= 1 (>= 2 with scale=True), got {group_size}")
    if rewards.numel() % group_size:
        raise ValueError(f"group_size={group_size} does not divide the number of rewards, {rewards.numel()}")
    grouped = rewards.detach().view(-1, group_size)  # (N / group_size, group_size)
    advantages = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        advantages = advantages / (grouped.std(dim=1, keepdim=True) + eps)
    return advantages.reshape(-1)


class FixedKLController:
    """A constant KL coefficient.

    Args:
        kl_coef: the coefficient of the per-token KL penalty.
    """

    def __init__(self, kl_coef: float = 0.05) -> None:
        if kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
        self.value = kl_coef

    def update(self, kl: float, n_steps: int) -> None:
        """Keep the coefficient as it is."""

    def state_dict(self) -> dict[str, float]:
        """The current coefficient, for checkpoints."""
        return {"value": float(self.value)}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        """Restore the coefficient from `state_dict`."""
        self.value = float(state_dict["value"])


class AdaptiveKLController:
    """A KL coefficient steered towards a target KL, Ziegler et al. 2019, https://arxiv.org/abs/1909.08593.

    e = clip(kl / target - 1, -0.2, 0.2);  value ← value · (1 + e · n_steps / horizon).

    Args:
        kl_coef: initial coefficient.
        target: KL (nats per sequence) to steer towards.
        horizon: steps over which a constant error changes the coefficient by about e.
    """

    def __init__(self, kl_coef: float = 0.05, target: float = 6.0, horizon: int = 10000) -> None:
        if kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
        if target <= 0:
            raise ValueError(f"target must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self.value, self.target, self.horizon = kl_coef, target, horizon

    def update(self, kl: float, n_steps: int) -> None:
        """Move the coefficient after `n_steps` samples whose measured KL was `kl`."""
        proportional_error = min(max(kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        """The current coefficient, for checkpoints."""
        return {"value": float(self.value)}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        """Restore the coefficient from `state_dict`."""
        self.value = float(state_dict["value"])


__all__ = ["AdaptiveKLController", "FixedKLController", "gae", "group_advantages", "whiten_advantages"]
