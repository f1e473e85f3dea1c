"""All objective math: pure tensor functions and small config classes; no Lightning, no models."""

from lightft.losses.logprobs import (
    entropy_from_logits,
    masked_mean,
    masked_whiten,
    sequence_logprobs,
    token_logprobs,
)
from lightft.losses.ppo import PPOLoss, kl_penalty, policy_loss, value_loss
from lightft.losses.preference import (
    DPOLoss,
    HingeLoss,
    IPOLoss,
    KTOLoss,
    ORPOLoss,
    PairLogps,
    PreferenceLoss,
    PreferenceOutput,
    SimPOLoss,
    UnpairedLogps,
    dpo_loss,
    hinge_loss,
    ipo_loss,
    kto_loss,
    orpo_loss,
    simpo_loss,
)
from lightft.losses.reward import BradleyTerryLoss, bradley_terry_loss
from lightft.losses.sft import IGNORE_INDEX, mean_token_loss, token_cross_entropy

__all__ = [
    "IGNORE_INDEX",
    "BradleyTerryLoss",
    "DPOLoss",
    "HingeLoss",
    "IPOLoss",
    "KTOLoss",
    "ORPOLoss",
    "PPOLoss",
    "PairLogps",
    "PreferenceLoss",
    "PreferenceOutput",
    "SimPOLoss",
    "UnpairedLogps",
    "bradley_terry_loss",
    "dpo_loss",
    "entropy_from_logits",
    "hinge_loss",
    "ipo_loss",
    "kl_penalty",
    "kto_loss",
    "masked_mean",
    "masked_whiten",
    "mean_token_loss",
    "orpo_loss",
    "policy_loss",
    "sequence_logprobs",
    "simpo_loss",
    "token_cross_entropy",
    "token_logprobs",
    "value_loss",
]
