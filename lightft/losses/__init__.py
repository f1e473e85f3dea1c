"""All objective math: pure tensor functions and small config classes; no Lightning, no models."""

from lightft.losses.sft import IGNORE_INDEX, mean_token_loss, token_cross_entropy

__all__ = ["IGNORE_INDEX", "mean_token_loss", "token_cross_entropy"]
