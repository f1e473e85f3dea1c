"""On-policy RL pieces shared by PPO and GRPO: advantage estimation and KL-coefficient control."""

from lightft.rl.advantages import (
    AdaptiveKLController,
    FixedKLController,
    gae,
    group_advantages,
    whiten_advantages,
)

__all__ = ["AdaptiveKLController", "FixedKLController", "gae", "group_advantages", "whiten_advantages"]
