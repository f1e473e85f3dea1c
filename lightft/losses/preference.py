"""Preference objectives: DPO (with cDPO / rDPO), IPO, hinge (SLiC), SimPO, ORPO and KTO.

Each objective is a pure function on summed (or length-normalised) completion log-probs plus a small class that
validates its hyper-parameters and is chosen by `class_path` in a config. Reference log-probs are detached inside the
functions, and implicit rewards are always detached, so gradients flow only through the policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class PairLogps:
    """Summed completion log-probs of one model on a batch of pairs."""

    chosen: Tensor  # (B,) summed log-probs of the chosen completion's trained tokens
    rejected: Tensor  # (B,)
    chosen_tokens: Tensor  # (B,) number of trained tokens
    rejected_tokens: Tensor  # (B,)
    chosen_nll: Tensor | None = None  # (B,) mean token NLL of chosen (used by ORPO); = -chosen / chosen_tokens


@dataclass(frozen=True)
class PreferenceOutput:
    """Per-example losses and the detached implicit rewards to log."""

    losses: Tensor  # (B,) per pair (per example for KTO)
    chosen_rewards: Tensor  # (B_c,) implicit rewards, detached
    rejected_rewards: Tensor  # (B_r,) detached


@dataclass(frozen=True)
class UnpairedLogps:
    """Log-probs of one model on a batch of unpaired (KTO) examples."""

    logps: Tensor  # (N,) summed log-probs of each completion
    kl_logps: Tensor  # (N,) summed log-probs of mismatched prompt/completion pairs (KL reference point)
    desirable: Tensor  # (N,) bool


class PreferenceLoss(Protocol):
    """What a preference module needs from a loss: flags for what to compute, and the loss itself."""

    reference_free: bool  # True: the module never runs a reference model
    paired: bool  # True: batches of (chosen, rejected) pairs, PairLogps; False: UnpairedLogps

    def __call__(self, policy: Any, reference: Any) -> PreferenceOutput:
        """Losses from policy and reference log-probs (PairLogps or UnpairedLogps; reference may be None)."""


def _margin(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor) -> Tensor:
    """The log-ratio margin h = (π_c - π_r) - (ref_c - ref_r), with the reference detached."""
    return (policy_chosen - policy_rejected) - (ref_chosen.detach() - ref_rejected.detach())


def _rewards(policy: Tensor, ref: Tensor, scale: float) -> Tensor:
    """Detached implicit reward scale · (π - ref)."""
    return (scale * (policy - ref)).detach()


def _smoothed_sigmoid_loss(z: Tensor, label_smoothing: float) -> Tensor:
    """-(1-ε) log σ(z) - ε log σ(-z): the preference label is flipped with probability ε."""
    return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def _average(logps: Tensor, tokens: Tensor) -> Tensor:
    """Length-normalised log-probs: sum / max(tokens, 1)."""
    return logps / tokens.clamp(min=1)


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, accurate near 0 and for very negative x (Mächler 2012)."""
    x = x.clamp(max=-1e-6)  # p = 1 exactly would give log 0
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    robust: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """DPO loss per pair, with conservative (cDPO) or robust (rDPO) label smoothing.

    h = (π_c - π_r) - (ref_c - ref_r); loss = -(1-ε) log σ(βh) - ε log σ(-βh).
    robust: loss = ((1-ε)(-log σ(βh)) - ε(-log σ(-βh))) / (1 - 2ε).

    Rafailov et al. 2023, https://arxiv.org/abs/2305.18290; cDPO, Mitchell 2023, https://ericmitchell.ai/cdpo.pdf;
    rDPO, Chowdhury et al. 2024, https://arxiv.org/abs/2403.00409.

    Args:
        policy_chosen: (B,) summed log-probs of the chosen completions under the policy.
        policy_rejected: (B,) same for the rejected completions.
        ref_chosen: (B,) chosen log-probs under the reference (detached here).
        ref_rejected: (B,) rejected log-probs under the reference.
        beta: inverse temperature β of the implicit reward.
        label_smoothing: ε, the assumed probability that a preference label is flipped.
        robust: use the unbiased rDPO estimator instead of cDPO.

    Returns:
        (losses, chosen_rewards, rejected_rewards), each (B,); rewards β(π - ref), detached.
    """
    z = beta * _margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)  # (B,)
    eps = label_smoothing
    if robust:
        losses = (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    else:
        losses = _smoothed_sigmoid_loss(z, eps)
    return losses, _rewards(policy_chosen, ref_chosen, beta), _rewards(policy_rejected, ref_rejected, beta)


def ipo_loss(
    policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, tau: float
) -> tuple[Tensor, Tensor, Tensor]:
    """IPO loss per pair, (h - 1/(2τ))², minimal when the log-ratio margin h equals 1/(2τ).

    Azar et al. 2023, https://arxiv.org/abs/2310.12036. Inputs are (B,) log-probs, summed or averaged as the caller
    chooses; returns (losses, chosen_rewards, rejected_rewards), each (B,), rewards τ(π - ref), detached.
    """
    h = _margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)  # (B,)
    losses = (h - 1 / (2 * tau)) ** 2
    return losses, _rewards(policy_chosen, ref_chosen, tau), _rewards(policy_rejected, ref_rejected, tau)


def hinge_loss(
    policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, beta: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Hinge loss per pair, relu(1 - βh), zero once the margin βh reaches 1.

    SLiC, Zhao et al. 2023, https://arxiv.org/abs/2305.10425. Inputs are (B,) summed log-probs; returns
    (losses, chosen_rewards, rejected_rewards), each (B,), rewards β(π - ref), detached.
    """
    h = _margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)  # (B,)
    losses = F.relu(1 - beta * h)
    return losses, _rewards(policy_chosen, ref_chosen, beta), _rewards(policy_rejected, ref_rejected, beta)


def simpo_loss(
    policy_chosen_avg: Tensor, policy_rejected_avg: Tensor, beta: float, gamma: float, label_smoothing: float = 0.0
) -> tuple[Tensor, Tensor, Tensor]:
    """SimPO loss per pair: z = β(avg_c - avg_r) - γ; loss = -(1-ε) log σ(z) - ε log σ(-z). No reference model.

    Meng et al. 2024, https://arxiv.org/abs/2405.14734. Inputs are (B,) length-normalised (per-token average)
    log-probs; returns (losses, chosen_rewards, rejected_rewards), each (B,), rewards β·avg, detached.
    """
    z = beta * (policy_chosen_avg - policy_rejected_avg) - gamma  # (B,)
    losses = _smoothed_sigmoid_loss(z, label_smoothing)
    return losses, (beta * policy_chosen_avg).detach(), (beta * policy_rejected_avg).detach()


def orpo_loss(
    policy_chosen_avg: Tensor, policy_rejected_avg: Tensor, chosen_nll: Tensor, lam: float
) -> tuple[Tensor, Tensor, Tensor]:
    """ORPO loss per pair: NLL of the chosen completion minus λ log σ(log odds ratio). No reference model.

    log_odds = (avg_c - avg_r) - (log(1 - e^avg_c) - log(1 - e^avg_r)); loss = nll_c - λ log σ(log_odds).
    Hong et al. 2024, https://arxiv.org/abs/2403.07691.

    Args:
        policy_chosen_avg: (B,) per-token average log-probs of the chosen completions.
        policy_rejected_avg: (B,) same for the rejected completions.
        chosen_nll: (B,) mean token NLL of the chosen completions (the SFT term).
        lam: weight λ of the odds-ratio term.

    Returns:
        (losses, chosen_rewards, rejected_rewards), each (B,); rewards λ·avg, detached.
    """
    log_1m_chosen, log_1m_rejected = _log1mexp(policy_chosen_avg), _log1mexp(policy_rejected_avg)  # log(1 - p)
    log_odds = (policy_chosen_avg - policy_rejected_avg) - (log_1m_chosen - log_1m_rejected)  # (B,)
    losses = chosen_nll - lam * F.logsigmoid(log_odds)
    return losses, (lam * policy_chosen_avg).detach(), (lam * policy_rejected_avg).detach()


def kto_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    desirable: Tensor,
    kl: Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """KTO loss per example, against a KL reference point z = max(kl, 0) (detached).

    r = π - ref; desirable: w_d (1 - σ(β(r - z))); undesirable: w_u (1 - σ(β(z - r))).
    Ethayarajh et al. 2024, https://arxiv.org/abs/2402.01306. Inputs are (N,) summed completion log-probs (the
    reference's detached here), an (N,) bool `desirable` and a scalar `kl` estimate of KL(policy || reference).
    Returns (losses (N,), chosen_rewards β r[desirable], rejected_rewards β r[~desirable]), rewards detached.
    """
    desirable = desirable.bool()
    z = kl.detach().clamp(min=0)
    log_ratio = policy_logps - ref_logps.detach()  # (N,)
    losses = torch.where(
        desirable,
        desirable_weight * (1 - torch.sigmoid(beta * (log_ratio - z))),
        undesirable_weight * (1 - torch.sigmoid(beta * (z - log_ratio))),
    )
    rewards = (beta * log_ratio).detach()
    return losses, rewards[desirable], rewards[~desirable]


def _require_reference(reference: Any, loss: str) -> Any:
    if reference is None:
        raise ValueError(f"{loss} needs reference log-probs; got reference=None")
    return reference


def _check(name: str, value: float, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {expected}, got {value}")


class DPOLoss:
    """Direct Preference Optimization, https://arxiv.org/abs/2305.18290.

    loss = -(1-ε) log σ(βh) - ε log σ(-βh), h = (π_c - π_r) - (ref_c - ref_r) on summed log-probs, (B,) per pair.
    With robust=True the rDPO estimator (https://arxiv.org/abs/2403.00409) divides the ε-corrected loss by 1 - 2ε.
    With rpo_alpha = α > 0 (RPO, https://arxiv.org/abs/2404.19733, TRL's `rpo_alpha`) each pair adds α times the
    chosen completion's mean token NLL: DPO alone may lower the likelihood of both sides of near-identical pairs and
    move it to text neither shows (likelihood displacement); the NLL term keeps the chosen text likely.

    Args:
        beta: inverse temperature β; smaller keeps the policy closer to the reference.
        label_smoothing: ε in [0, 0.5), the assumed rate of flipped labels (cDPO, or rDPO when robust).
        robust: use the robust (rDPO) estimator.
        rpo_alpha: α >= 0, weight of the chosen completions' NLL (0: plain DPO).
    """

    reference_free = False
    paired = True

    def __init__(
        self, beta: float = 0.1, label_smoothing: float = 0.0, robust: bool = False, rpo_alpha: float = 0.0
    ) -> None:
        _check("beta", beta, beta > 0, "> 0")
        _check("label_smoothing", label_smoothing, 0 <= label_smoothing < 0.5, "in [0, 0.5)")
        _check("rpo_alpha", rpo_alpha, rpo_alpha >= 0, ">= 0")
        self.beta, self.label_smoothing, self.robust, self.rpo_alpha = beta, label_smoothing, robust, rpo_alpha

    def __call__(self, policy: PairLogps, reference: PairLogps | None) -> PreferenceOutput:
        """Per-pair losses and implicit rewards."""
        ref = _require_reference(reference, "DPOLoss")
        losses, chosen, rejected = dpo_loss(
            policy.chosen, policy.rejected, ref.chosen, ref.rejected, self.beta, self.label_smoothing, self.robust
        )
        if self.rpo_alpha:
            nll = policy.chosen_nll if policy.chosen_nll is not None else -_average(policy.chosen, policy.chosen_tokens)
            losses = losses + self.rpo_alpha * nll
        return PreferenceOutput(losses, chosen, rejected)


class IPOLoss:
    """Identity Preference Optimization, https://arxiv.org/abs/2310.12036.

    loss = (h - 1/(2τ))², h = (π_c - π_r) - (ref_c - ref_r), (B,) per pair.

    Args:
        tau: regularisation τ; the loss pulls h to 1/(2τ).
        length_normalize: use per-token average log-probs (as TRL does) instead of sums.
    """

    reference_free = False
    paired = True

    def __init__(self, tau: float = 0.1, length_normalize: bool = True) -> None:
        _check("tau", tau, tau > 0, "> 0")
        self.tau, self.length_normalize = tau, length_normalize

    def __call__(self, policy: PairLogps, reference: PairLogps | None) -> PreferenceOutput:
        """Per-pair losses and implicit rewards."""
        ref = _require_reference(reference, "IPOLoss")
        logps = [policy.chosen, policy.rejected, ref.chosen, ref.rejected]
        if self.length_normalize:
            tokens = [policy.chosen_tokens, policy.rejected_tokens, ref.chosen_tokens, ref.rejected_tokens]
            logps = [_average(lp, n) for lp, n in zip(logps, tokens, strict=True)]
        return PreferenceOutput(*ipo_loss(*logps, self.tau))


class HingeLoss:
    """SLiC hinge loss, https://arxiv.org/abs/2305.10425.

    loss = relu(1 - βh), h = (π_c - π_r) - (ref_c - ref_r) on summed log-probs, (B,) per pair.

    Args:
        beta: β; the loss is zero once h >= 1/β.
    """

    reference_free = False
    paired = True

    def __init__(self, beta: float = 0.1) -> None:
        _check("beta", beta, beta > 0, "> 0")
        self.beta = beta

    def __call__(self, policy: PairLogps, reference: PairLogps | None) -> PreferenceOutput:
        """Per-pair losses and implicit rewards."""
        ref = _require_reference(reference, "HingeLoss")
        return PreferenceOutput(*hinge_loss(policy.chosen, policy.rejected, ref.chosen, ref.rejected, self.beta))


class SimPOLoss:
    """Simple Preference Optimization, https://arxiv.org/abs/2405.14734 (reference-free).

    z = β(avg_c - avg_r) - γ on per-token average log-probs; loss = -(1-ε) log σ(z) - ε log σ(-z), (B,) per pair.

    Args:
        beta: β, scale of the length-normalised reward.
        gamma: γ >= 0, target reward margin.
        label_smoothing: ε in [0, 0.5).
    """

    reference_free = True
    paired = True

    def __init__(self, beta: float = 2.0, gamma: float = 0.5, label_smoothing: float = 0.0) -> None:
        _check("beta", beta, beta > 0, "> 0")
        _check("gamma", gamma, gamma >= 0, ">= 0")
        _check("label_smoothing", label_smoothing, 0 <= label_smoothing < 0.5, "in [0, 0.5)")
        self.beta, self.gamma, self.label_smoothing = beta, gamma, label_smoothing

    def __call__(self, policy: PairLogps, reference: PairLogps | None = None) -> PreferenceOutput:
        """Per-pair losses and rewards; `reference` is ignored."""
        chosen_avg = _average(policy.chosen, policy.chosen_tokens)
        rejected_avg = _average(policy.rejected, policy.rejected_tokens)
        return PreferenceOutput(*simpo_loss(chosen_avg, rejected_avg, self.beta, self.gamma, self.label_smoothing))


class ORPOLoss:
    """Odds Ratio Preference Optimization, https://arxiv.org/abs/2403.07691 (reference-free).

    loss = nll_c - λ log σ(log odds(avg_c) - log odds(avg_r)), odds(p) = p / (1 - p), on per-token average
    log-probs, (B,) per pair. The NLL term is `policy.chosen_nll`, or -chosen / chosen_tokens when it is None.

    Args:
        lam: λ >= 0, weight of the odds-ratio term.
    """

    reference_free = True
    paired = True

    def __init__(self, lam: float = 0.1) -> None:
        _check("lam", lam, lam >= 0, ">= 0")
        self.lam = lam

    def __call__(self, policy: PairLogps, reference: PairLogps | None = None) -> PreferenceOutput:
        """Per-pair losses and rewards; `reference` is ignored."""
        chosen_avg = _average(policy.chosen, policy.chosen_tokens)
        rejected_avg = _average(policy.rejected, policy.rejected_tokens)
        nll = policy.chosen_nll if policy.chosen_nll is not None else -chosen_avg
        return PreferenceOutput(*orpo_loss(chosen_avg, rejected_avg, nll, self.lam))


class KTOLoss:
    """Kahneman-Tversky Optimization, https://arxiv.org/abs/2402.01306 (unpaired).

    r = π - ref; z = max(mean(π_kl - ref_kl), 0), detached, estimated on mismatched prompt/completion pairs.
    loss = w_d (1 - σ(β(r - z))) for desirable examples, w_u (1 - σ(β(z - r))) for undesirable ones, (N,).

    Args:
        beta: inverse temperature β.
        desirable_weight: w_d >= 0.
        undesirable_weight: w_u >= 0; balance w_d n_d against w_u n_u when classes are imbalanced.
    """

    reference_free = False
    paired = False

    def __init__(self, beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> None:
        _check("beta", beta, beta > 0, "> 0")
        _check("desirable_weight", desirable_weight, desirable_weight >= 0, ">= 0")
        _check("undesirable_weight", undesirable_weight, undesirable_weight >= 0, ">= 0")
        self.beta, self.desirable_weight, self.undesirable_weight = beta, desirable_weight, undesirable_weight

    def __call__(self, policy: UnpairedLogps, reference: UnpairedLogps | None) -> PreferenceOutput:
        """Per-example losses and rewards (desirable ones as chosen, undesirable ones as rejected)."""
        ref = _require_reference(reference, "KTOLoss")
        kl = (policy.kl_logps - ref.kl_logps).mean().clamp(min=0).detach()
        out = kto_loss(
            policy.logps, ref.logps, policy.desirable, kl, self.beta, self.desirable_weight, self.undesirable_weight
        )
        return PreferenceOutput(*out)


__all__ = [
    "DPOLoss",
    "HingeLoss",
    "IPOLoss",
    "KTOLoss",
    "ORPOLoss",
    "PairLogps",
    "PreferenceLoss",
    "PreferenceOutput",
    "SimPOLoss",
    "UnpairedLogps",
    "dpo_loss",
    "hinge_loss",
    "ipo_loss",
    "kto_loss",
    "orpo_loss",
    "simpo_loss",
]
