"""Pairwise reward-model loss: Bradley-Terry with an optional margin and reward centering.

The reward model outputs one scalar per sequence; the loss asks the chosen one to score higher than the rejected one.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def bradley_terry_loss(chosen_rewards: Tensor, rejected_rewards: Tensor, margin: Tensor | None = None) -> Tensor:
    """Negative log-likelihood that the chosen completion wins, -log σ(r_c - r_r - m).

    Ouyang et al. 2022 (InstructGPT), https://arxiv.org/abs/2203.02155; the margin m as in Llama 2
    (Touvron et al. 2023), https://arxiv.org/abs/2307.09288.

    Args:
        chosen_rewards: (B,) scalar rewards of the chosen completions.
        rejected_rewards: (B,) scalar rewards of the rejected completions.
        margin: (B,) how much better the chosen one was rated; 0 when None.

    Returns:
        (B,) loss per pair.
    """
    diff = chosen_rewards - rejected_rewards  # (B,)
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff)


class BradleyTerryLoss:
    """Bradley-Terry pairwise loss plus reward centering.

    loss = -log σ(r_c - r_r - m) + c · (r_c + r_r)²

    The second term (Eisenstein et al. 2023, https://arxiv.org/abs/2312.09244) keeps the rewards near zero, since the
    first term only sees their difference. Inputs are (B,) rewards and an optional (B,) margin; the output is (B,).

    Args:
        center_rewards_coefficient: weight c of the centering term; 0 turns it off.
    """

    def __init__(self, center_rewards_coefficient: float = 0.0) -> None:
        if center_rewards_coefficient < 0:
            raise ValueError(f"center_rewards_coefficient must be >= 0, got {center_rewards_coefficient}")
        self.center_rewards_coefficient = center_rewards_coefficient

    def __call__(self, chosen_rewards: Tensor, rejected_rewards: Tensor, margin: Tensor | None = None) -> Tensor:
        """(B,) loss per pair; see the class docstring."""
        losses = bradley_terry_loss(chosen_rewards, rejected_rewards, margin)
        return losses + self.center_rewards_coefficient * (chosen_rewards + rejected_rewards) ** 2


__all__ = ["BradleyTerryLoss", "bradley_terry_loss"]
