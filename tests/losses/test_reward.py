"""Bradley-Terry reward-model loss against hand-worked numbers."""

import math

import pytest
import torch

from lightft.losses.reward import BradleyTerryLoss, bradley_terry_loss


def neg_log_sigmoid(x: float) -> float:
    return math.log1p(math.exp(-x))


def test_bradley_terry_by_hand():
    chosen = torch.tensor([2.0, 0.0, -1.0])
    rejected = torch.tensor([1.0, 0.0, 1.0])
    # diffs 1, 0, -2: -log σ(1) = 0.313262, -log σ(0) = log 2 = 0.693147, -log σ(-2) = 2.126928
    expected = torch.tensor([neg_log_sigmoid(1.0), math.log(2), neg_log_sigmoid(-2.0)])
    torch.testing.assert_close(bradley_terry_loss(chosen, rejected), expected)


def test_margin_is_subtracted():
    chosen, rejected = torch.tensor([2.0, 2.0]), torch.tensor([1.0, 1.0])
    margin = torch.tensor([0.5, 0.0])
    # -log σ(1 - 0.5) = 0.474077; margin 0 is the plain loss, -log σ(1) = 0.313262
    expected = torch.tensor([neg_log_sigmoid(0.5), neg_log_sigmoid(1.0)])
    torch.testing.assert_close(bradley_terry_loss(chosen, rejected, margin), expected)


def test_gradient_by_hand():
    chosen = torch.tensor([2.0], requires_grad=True)
    rejected = torch.tensor([1.0], requires_grad=True)
    bradley_terry_loss(chosen, rejected).sum().backward()
    # d/dr_c -log σ(r_c - r_r) = -σ(-(r_c - r_r)) = -σ(-1) = -0.268941; the rejected one gets the opposite
    s = 1 / (1 + math.exp(1.0))
    assert chosen.grad.item() == pytest.approx(-s, rel=1e-6)
    assert rejected.grad.item() == pytest.approx(s, rel=1e-6)


def test_centering_term_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.5]), torch.tensor([1.0, -0.5])
    loss = BradleyTerryLoss(center_rewards_coefficient=0.01)
    # pair 0: 0.313262 + 0.01 (2 + 1)² = 0.403262; pair 1: -log σ(1) + 0.01 (0.5 - 0.5)² = 0.313262
    expected = torch.tensor([neg_log_sigmoid(1.0) + 0.01 * 9, neg_log_sigmoid(1.0)])
    torch.testing.assert_close(loss(chosen, rejected), expected)
    # the default coefficient 0 is the plain loss
    torch.testing.assert_close(BradleyTerryLoss()(chosen, rejected), bradley_terry_loss(chosen, rejected))


def test_centering_with_margin():
    loss = BradleyTerryLoss(center_rewards_coefficient=0.1)
    out = loss(torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([1.0]))
    # -log σ(2 - 1 - 1) = log 2; + 0.1 · 3² = 0.9
    assert out.item() == pytest.approx(math.log(2) + 0.9, rel=1e-6)


def test_negative_coefficient_rejected():
    with pytest.raises(ValueError, match="center_rewards_coefficient"):
        BradleyTerryLoss(center_rewards_coefficient=-0.1)
