"""Preference losses (DPO, cDPO, rDPO, IPO, hinge, SimPO, ORPO, KTO) against hand-worked numbers and limits."""

import math

import pytest
import torch

from lightft.losses.preference import (
    DPOLoss,
    HingeLoss,
    IPOLoss,
    KTOLoss,
    ORPOLoss,
    PairLogps,
    SimPOLoss,
    UnpairedLogps,
    dpo_loss,
    hinge_loss,
    ipo_loss,
    kto_loss,
    orpo_loss,
    simpo_loss,
)


def neg_log_sigmoid(x: float) -> float:
    return math.log1p(math.exp(-x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def pair(chosen, rejected, chosen_tokens=(1,), rejected_tokens=(1,), requires_grad=False, chosen_nll=None):
    return PairLogps(
        chosen=torch.tensor(chosen, requires_grad=requires_grad),
        rejected=torch.tensor(rejected, requires_grad=requires_grad),
        chosen_tokens=torch.tensor(chosen_tokens),
        rejected_tokens=torch.tensor(rejected_tokens),
        chosen_nll=None if chosen_nll is None else torch.tensor(chosen_nll),
    )


# ---------------------------------------------------------------- DPO


def test_dpo_by_hand():
    policy, reference = pair([-1.0], [-3.0]), pair([-2.0], [-2.0])
    out = DPOLoss(beta=0.1)(policy, reference)
    # h = (-1 - -3) - (-2 - -2) = 2; β h = 0.2; -log σ(0.2) = 0.598139
    assert out.losses.item() == pytest.approx(neg_log_sigmoid(0.2), rel=1e-6)
    # rewards β (π - ref): 0.1 (-1 - -2) = 0.1 and 0.1 (-3 - -2) = -0.1
    assert out.chosen_rewards.item() == pytest.approx(0.1) and out.rejected_rewards.item() == pytest.approx(-0.1)


def test_rpo_adds_alpha_times_the_chosen_mean_nll():
    """RPO: the DPO loss of test_dpo_by_hand plus α x (summed chosen log-prob -8 over 4 tokens -> NLL 2)."""
    policy, reference = pair([-8.0], [-9.0], chosen_tokens=(4,), rejected_tokens=(3,)), pair([-8.0], [-8.0])
    plain = DPOLoss(beta=0.1)(policy, reference)
    rpo = DPOLoss(beta=0.1, rpo_alpha=0.5)(policy, reference)
    # h = (-8 - -9) - 0 = 1; DPO = -log σ(0.1); NLL = 8 / 4 = 2; RPO = DPO + 0.5 x 2
    assert plain.losses.item() == pytest.approx(neg_log_sigmoid(0.1), rel=1e-6)
    assert rpo.losses.item() == pytest.approx(neg_log_sigmoid(0.1) + 1.0, rel=1e-6)
    assert rpo.chosen_rewards.item() == plain.chosen_rewards.item()  # the logged implicit rewards are DPO's
    given = DPOLoss(beta=0.1, rpo_alpha=0.5)(pair([-8.0], [-9.0], (4,), (3,), chosen_nll=[3.0]), reference)
    assert given.losses.item() == pytest.approx(neg_log_sigmoid(0.1) + 1.5, rel=1e-6)  # a given NLL is used as is
    with pytest.raises(ValueError, match="rpo_alpha must be >= 0"):
        DPOLoss(rpo_alpha=-1.0)


def test_dpo_at_init_is_log_two_for_every_pair():
    torch.manual_seed(0)
    chosen, rejected = -10 * torch.rand(5), -10 * torch.rand(5)
    losses, chosen_rewards, rejected_rewards = dpo_loss(chosen, rejected, chosen, rejected, beta=0.3)
    # policy = reference: h = 0, -log σ(0) = log 2 = 0.693147, and both rewards are 0
    torch.testing.assert_close(losses, torch.full((5,), math.log(2)))
    assert (chosen_rewards == 0).all() and (rejected_rewards == 0).all()


def test_dpo_small_beta_limit():
    beta = 1e-4
    policy_chosen = torch.tensor([-1.0, -5.0], requires_grad=True)
    policy_rejected = torch.tensor([-3.0, -2.0], requires_grad=True)
    losses, _, _ = dpo_loss(
        policy_chosen, policy_rejected, torch.tensor([-2.0, -4.0]), torch.tensor([-2.0, -1.0]), beta
    )
    # β h → 0: -log σ(β h) → log 2, and d/dπ_c = -β σ(-β h) → -β/2 (the rejected one +β/2)
    torch.testing.assert_close(losses, torch.full((2,), math.log(2)), rtol=0, atol=1e-3)
    losses.sum().backward()
    torch.testing.assert_close(policy_chosen.grad / beta, torch.full((2,), -0.5), rtol=0, atol=1e-3)
    torch.testing.assert_close(policy_rejected.grad / beta, torch.full((2,), 0.5), rtol=0, atol=1e-3)


def test_dpo_label_smoothing():
    policy, reference = pair([-1.0], [-3.0]), pair([-2.0], [-2.0])
    plain = DPOLoss(beta=0.1)(policy, reference).losses
    # ε = 0 is plain DPO
    torch.testing.assert_close(DPOLoss(beta=0.1, label_smoothing=0.0)(policy, reference).losses, plain)
    # cDPO, ε = 0.1, β h = 0.2: 0.9 · 0.598139 + 0.1 · (-log σ(-0.2) = 0.798139) = 0.618139
    smoothed = DPOLoss(beta=0.1, label_smoothing=0.1)(policy, reference).losses
    assert smoothed.item() == pytest.approx(0.9 * neg_log_sigmoid(0.2) + 0.1 * neg_log_sigmoid(-0.2), rel=1e-6)
    assert smoothed.item() != pytest.approx(plain.item())


def test_robust_dpo_by_hand():
    policy, reference = pair([-1.0], [-3.0]), pair([-2.0], [-2.0])
    out = DPOLoss(beta=0.1, label_smoothing=0.1, robust=True)(policy, reference)
    # rDPO: (0.9 · 0.598139 - 0.1 · 0.798139) / (1 - 0.2) = 0.573139
    expected = (0.9 * neg_log_sigmoid(0.2) - 0.1 * neg_log_sigmoid(-0.2)) / 0.8
    assert out.losses.item() == pytest.approx(expected, rel=1e-6)
    # with ε = 0 the robust estimator is plain DPO
    robust_plain = DPOLoss(beta=0.1, robust=True)(policy, reference).losses
    assert robust_plain.item() == pytest.approx(neg_log_sigmoid(0.2), rel=1e-6)


def test_dpo_gradients_flow_only_through_policy():
    policy = pair([-1.0, -2.0], [-3.0, -1.0], (1, 1), (1, 1), requires_grad=True)
    reference = pair([-2.0, -2.0], [-2.0, -2.0], (1, 1), (1, 1), requires_grad=True)
    out = DPOLoss(beta=0.1)(policy, reference)
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad
    out.losses.sum().backward()
    assert policy.chosen.grad is not None and policy.rejected.grad is not None
    assert reference.chosen.grad is None and reference.rejected.grad is None


def test_dpo_needs_reference_and_valid_arguments():
    with pytest.raises(ValueError, match="reference"):
        DPOLoss()(pair([-1.0], [-2.0]), None)
    with pytest.raises(ValueError, match="beta"):
        DPOLoss(beta=0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        DPOLoss(label_smoothing=0.5)
    with pytest.raises(ValueError, match="label_smoothing"):
        DPOLoss(label_smoothing=-0.1)


# ---------------------------------------------------------------- IPO and hinge


def test_ipo_by_hand_length_normalized_and_summed():
    # sums / tokens: policy (-4/2, -6/3) = (-2, -2); reference (-6/2, -6/3) = (-3, -2)
    policy = pair([-4.0], [-6.0], (2,), (3,))
    reference = pair([-6.0], [-6.0], (2,), (3,))
    # averages: h = (-2 - -2) - (-3 - -2) = 1; τ = 0.5: (1 - 1/(2 · 0.5))² = 0; τ = 0.1: (1 - 5)² = 16
    assert IPOLoss(tau=0.5)(policy, reference).losses.item() == pytest.approx(0.0)
    assert IPOLoss(tau=0.1)(policy, reference).losses.item() == pytest.approx(16.0)
    # sums: h = (-4 - -6) - (-6 - -6) = 2; τ = 0.1: (2 - 5)² = 9
    assert IPOLoss(tau=0.1, length_normalize=False)(policy, reference).losses.item() == pytest.approx(9.0)


def test_ipo_minimum_at_half_inverse_tau():
    tau = 0.25  # 1/(2τ) = 2
    ref = torch.tensor([0.0])
    losses = {}
    for h in (1.5, 2.0, 2.5):
        chosen = torch.tensor([h], requires_grad=True)
        loss, _, _ = ipo_loss(chosen, torch.tensor([0.0]), ref, ref, tau)
        loss.sum().backward()
        losses[h] = (loss.item(), chosen.grad.item())
    # (h - 2)²: 0.25 on either side, 0 at h = 2 with zero gradient; gradient 2(h - 2) = -1 below, +1 above
    assert losses[2.0] == pytest.approx((0.0, 0.0))
    assert losses[1.5] == pytest.approx((0.25, -1.0)) and losses[2.5] == pytest.approx((0.25, 1.0))


def test_hinge_by_hand_and_zero_beyond_margin():
    beta = 0.5
    chosen = torch.tensor([1.0, 2.0, 4.0], requires_grad=True)
    zeros = torch.zeros(3)
    losses, chosen_rewards, _ = hinge_loss(chosen, zeros, zeros, zeros, beta)
    # h = 1, 2, 4: relu(1 - 0.5) = 0.5, relu(1 - 1) = 0, relu(1 - 2) = 0
    torch.testing.assert_close(losses, torch.tensor([0.5, 0.0, 0.0]))
    torch.testing.assert_close(chosen_rewards, torch.tensor([0.5, 1.0, 2.0]))
    losses.sum().backward()
    # inside the margin d/dπ_c = -β; beyond it no gradient
    assert chosen.grad[0].item() == pytest.approx(-0.5) and chosen.grad[2].item() == 0.0


def test_hinge_class_matches_function():
    policy, reference = pair([-1.0], [-3.0]), pair([-2.0], [-2.0])
    # h = 2, β = 0.2: relu(1 - 0.4) = 0.6
    assert HingeLoss(beta=0.2)(policy, reference).losses.item() == pytest.approx(0.6)
    with pytest.raises(ValueError, match="reference"):
        HingeLoss()(policy, None)


# ---------------------------------------------------------------- reference-free: SimPO and ORPO


def test_simpo_by_hand():
    # averages: -2/4 = -0.5 and -6/3 = -2; z = 2 · (-0.5 - -2) - 0.5 = 2.5; -log σ(2.5) = 0.078890
    policy = pair([-2.0], [-6.0], (4,), (3,))
    out = SimPOLoss(beta=2.0, gamma=0.5)(policy, None)
    assert out.losses.item() == pytest.approx(neg_log_sigmoid(2.5), rel=1e-6)
    # rewards β · avg: -1 and -4
    assert out.chosen_rewards.item() == pytest.approx(-1.0) and out.rejected_rewards.item() == pytest.approx(-4.0)
    # ε = 0.1: 0.9 · 0.078890 + 0.1 · (-log σ(-2.5) = 2.578890) = 0.328890
    smoothed = SimPOLoss(beta=2.0, gamma=0.5, label_smoothing=0.1)(policy, None).losses
    assert smoothed.item() == pytest.approx(0.9 * neg_log_sigmoid(2.5) + 0.1 * neg_log_sigmoid(-2.5), rel=1e-6)


def test_simpo_function_by_hand():
    losses, _, _ = simpo_loss(torch.tensor([-1.0]), torch.tensor([-1.0]), beta=2.0, gamma=1.0)
    # z = 2 · 0 - 1 = -1: -log σ(-1) = 1.313262
    assert losses.item() == pytest.approx(neg_log_sigmoid(-1.0), rel=1e-6)


def test_orpo_by_hand():
    # p_c = 0.5 per token (2 tokens), p_r = 0.25 per token (3 tokens): averages log 0.5 and log 0.25
    policy = pair([2 * math.log(0.5)], [3 * math.log(0.25)], (2,), (3,))
    out = ORPOLoss(lam=0.1)(policy, None)
    # odds 0.5/0.5 = 1 and 0.25/0.75 = 1/3: log odds ratio = log 3; -log σ(log 3) = log(4/3) = 0.287682
    # nll = -avg_c = log 2 = 0.693147; loss = 0.693147 + 0.1 · 0.287682 = 0.721915
    assert out.losses.item() == pytest.approx(math.log(2) + 0.1 * math.log(4 / 3), rel=1e-5)
    assert out.chosen_rewards.item() == pytest.approx(0.1 * math.log(0.5), rel=1e-5)
    assert out.rejected_rewards.item() == pytest.approx(0.1 * math.log(0.25), rel=1e-5)
    # an explicit NLL term replaces -chosen / chosen_tokens
    with_nll = pair([2 * math.log(0.5)], [3 * math.log(0.25)], (2,), (3,), chosen_nll=[1.0])
    assert ORPOLoss(lam=0.1)(with_nll, None).losses.item() == pytest.approx(1.0 + 0.1 * math.log(4 / 3), rel=1e-5)


def test_orpo_is_finite_near_probability_one():
    avg = torch.tensor([0.0, -1e-9, -1e-4], requires_grad=True)
    losses, _, _ = orpo_loss(avg, torch.tensor([-30.0, -1.0, -50.0]), -avg, lam=1.0)
    losses.sum().backward()
    assert torch.isfinite(losses).all() and torch.isfinite(avg.grad).all()
    # very negative averages: log(1 - e^x) ≈ -e^x ≈ 0, so log odds ≈ avg_c - avg_r
    losses, _, _ = orpo_loss(torch.tensor([-40.0]), torch.tensor([-42.0]), torch.tensor([0.0]), lam=1.0)
    assert losses.item() == pytest.approx(neg_log_sigmoid(2.0), rel=1e-5)


@pytest.mark.parametrize("loss", [SimPOLoss(), ORPOLoss(lam=0.5)])
def test_reference_free_losses_ignore_the_reference(loss):
    policy = pair([-3.0, -2.0], [-5.0, -1.0], (2, 4), (3, 1))
    assert loss.reference_free and loss.paired
    base = loss(policy, None)
    for reference in (pair([-1.0, -1.0], [-9.0, -9.0], (1, 1), (1, 1)), pair([0.0, 7.0], [3.0, -2.0], (5, 5), (2, 2))):
        out = loss(policy, reference)
        torch.testing.assert_close(out.losses, base.losses)
        torch.testing.assert_close(out.chosen_rewards, base.chosen_rewards)


@pytest.mark.parametrize("loss", [SimPOLoss(), ORPOLoss()])
def test_reference_free_gradients_and_detached_rewards(loss):
    policy = pair([-3.0], [-5.0], (2,), (3,), requires_grad=True)
    out = loss(policy, None)
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad
    out.losses.sum().backward()
    assert policy.chosen.grad.item() != 0 and policy.rejected.grad.item() != 0


def test_constructors_validate_arguments():
    with pytest.raises(ValueError, match="tau"):
        IPOLoss(tau=0.0)
    with pytest.raises(ValueError, match="beta"):
        HingeLoss(beta=-1.0)
    with pytest.raises(ValueError, match="gamma"):
        SimPOLoss(gamma=-0.1)
    with pytest.raises(ValueError, match="label_smoothing"):
        SimPOLoss(label_smoothing=0.7)
    with pytest.raises(ValueError, match="lam"):
        ORPOLoss(lam=-1.0)
    with pytest.raises(ValueError, match="undesirable_weight"):
        KTOLoss(undesirable_weight=-1.0)


def test_flags():
    assert (DPOLoss.reference_free, DPOLoss.paired) == (False, True)
    assert (IPOLoss.reference_free, HingeLoss.reference_free) == (False, False)
    assert (SimPOLoss.reference_free, ORPOLoss.reference_free) == (True, True)
    assert (KTOLoss.reference_free, KTOLoss.paired) == (False, False)


# ---------------------------------------------------------------- KTO


def unpaired(logps, kl_logps, desirable, requires_grad=False):
    return UnpairedLogps(
        logps=torch.tensor(logps, requires_grad=requires_grad),
        kl_logps=torch.tensor(kl_logps, requires_grad=requires_grad),
        desirable=torch.tensor(desirable),
    )


def test_kto_by_hand():
    policy = unpaired([-1.0, -2.0], [-3.0, -3.0], [True, False], requires_grad=True)
    reference = unpaired([-1.5, -1.0], [-3.4, -3.2], [True, False], requires_grad=True)
    out = KTOLoss(beta=1.0, undesirable_weight=2.0)(policy, reference)
    # z = mean(0.4, 0.2) = 0.3; r = (0.5, -1.0)
    # desirable: 1 - σ(0.5 - 0.3) = 0.450166; undesirable: 2 (1 - σ(0.3 - -1.0)) = 2 · 0.214165 = 0.428330
    expected = torch.tensor([1 - sigmoid(0.2), 2 * (1 - sigmoid(1.3))])
    torch.testing.assert_close(out.losses, expected)
    torch.testing.assert_close(out.chosen_rewards, torch.tensor([0.5]))
    torch.testing.assert_close(out.rejected_rewards, torch.tensor([-1.0]))
    out.losses.sum().backward()
    # the KL reference point is detached, and so is the reference model
    assert policy.logps.grad is not None and policy.kl_logps.grad is None
    assert reference.logps.grad is None and reference.kl_logps.grad is None


def test_kto_desirable_only_and_undesirable_only():
    logps, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -2.0])  # r = (1, 0)
    kl = torch.tensor(0.5)
    desirable = torch.tensor([True, True])
    losses, chosen, rejected = kto_loss(logps, ref, desirable, kl, beta=2.0)
    # 1 - σ(2 (1 - 0.5)) = 1 - σ(1) = 0.268941; 1 - σ(2 (0 - 0.5)) = 1 - σ(-1) = 0.731059
    torch.testing.assert_close(losses, torch.tensor([1 - sigmoid(1.0), 1 - sigmoid(-1.0)]))
    assert chosen.tolist() == [2.0, 0.0] and rejected.numel() == 0
    losses, chosen, rejected = kto_loss(logps, ref, ~desirable, kl, beta=2.0, undesirable_weight=0.5)
    # 0.5 (1 - σ(2 (0.5 - 1))) = 0.5 (1 - σ(-1)) = 0.365529; 0.5 (1 - σ(1)) = 0.134471
    torch.testing.assert_close(losses, torch.tensor([0.5 * (1 - sigmoid(-1.0)), 0.5 * (1 - sigmoid(1.0))]))
    assert chosen.numel() == 0 and rejected.tolist() == [2.0, 0.0]


def test_kto_clamps_negative_kl_to_zero():
    policy = unpaired([-1.0], [-5.0], [True])
    reference = unpaired([-1.0], [-4.0], [True])
    # mean(-5 - -4) = -1 → z = 0; r = 0: 1 - σ(0) = 0.5
    assert KTOLoss(beta=0.1)(policy, reference).losses.item() == pytest.approx(0.5)
    # the function clamps on its own too
    losses, _, _ = kto_loss(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([False]), torch.tensor(-3.0), 1.0)
    assert losses.item() == pytest.approx(0.5)


def test_kto_needs_reference():
    with pytest.raises(ValueError, match="reference"):
        KTOLoss()(unpaired([-1.0], [-1.0], [True]), None)
