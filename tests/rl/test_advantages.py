"""GAE, whitening, group-relative advantages and KL controllers against hand-worked numbers."""

import math

import pytest
import torch

from lightft.rl.advantages import (
    AdaptiveKLController,
    FixedKLController,
    gae,
    group_advantages,
    whiten_advantages,
)


def test_gae_three_tokens_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # t = 2: δ = 1 + 0 - 0.7 = 0.3;           A = 0.3
    # t = 1: δ = 0 + 0.7 - 0.6 = 0.1;         A = 0.1 + 0.95 · 0.3 = 0.385
    # t = 0: δ = 0 + 0.6 - 0.5 = 0.1;         A = 0.1 + 0.95 · 0.385 = 0.46575
    # returns = A + V = (0.96575, 0.985, 1.0)
    torch.testing.assert_close(advantages, torch.tensor([[0.46575, 0.385, 0.3]]))
    torch.testing.assert_close(returns, torch.tensor([[0.96575, 0.985, 1.0]]))


def test_gae_early_ending_mask_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 5.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [0.5, 0.6, float("nan")]])  # padding may hold anything
    mask = torch.tensor([[True, True, True], [True, True, False]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # row 1 ends at t = 1, so its reward 5 and value NaN at t = 2 are never seen:
    # t = 1: δ = 1 + 0 - 0.6 = 0.4;  A = 0.4
    # t = 0: δ = 0 + 0.6 - 0.5 = 0.1; A = 0.1 + 0.95 · 0.4 = 0.48
    # returns (0.98, 1.0, 0); row 0 as in the unmasked example
    torch.testing.assert_close(advantages, torch.tensor([[0.46575, 0.385, 0.3], [0.48, 0.4, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[0.96575, 0.985, 1.0], [0.98, 1.0, 0.0]]))


def test_gae_discount_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    advantages, returns = gae(rewards, values, mask, gamma=0.5, lam=1.0)
    # t = 2: δ = 0.3, A = 0.3; t = 1: δ = 0.5 · 0.7 - 0.6 = -0.25, A = -0.25 + 0.5 · 0.3 = -0.1
    # t = 0: δ = 0.5 · 0.6 - 0.5 = -0.2, A = -0.2 + 0.5 · -0.1 = -0.25
    # with λ = 1 the returns are the discounted rewards-to-go: (0.25, 0.5, 1)
    torch.testing.assert_close(advantages, torch.tensor([[-0.25, -0.1, 0.3]]))
    torch.testing.assert_close(returns, torch.tensor([[0.25, 0.5, 1.0]]))


def test_gae_outputs_are_detached():
    values = torch.tensor([[0.5, 0.6]], requires_grad=True)
    advantages, returns = gae(torch.tensor([[0.0, 1.0]]), values, torch.ones(1, 2, dtype=torch.bool))
    assert not advantages.requires_grad and not returns.requires_grad


def test_whiten_advantages():
    torch.manual_seed(0)
    advantages = 3 + 2 * torch.randn(4, 8)
    mask = torch.arange(8).expand(4, 8) < torch.tensor([[8], [5], [3], [6]])
    out = whiten_advantages(advantages, mask)
    assert out[mask].mean().item() == pytest.approx(0.0, abs=1e-5)
    assert out[mask].std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)
    assert (out[~mask] == 0).all()


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 0.0, 1.0, 1.0])
    out = group_advantages(rewards, group_size=4)
    # group 0: mean 0.5, deviations ±0.5, unbiased std sqrt(4 · 0.25 / 3) = 0.577350
    # group 1: mean 1, deviations (1, -1, 0, 0), unbiased std sqrt(2 / 3) = 0.816497
    s0, s1 = math.sqrt(1 / 3) + 1e-4, math.sqrt(2 / 3) + 1e-4
    expected = torch.tensor([0.5 / s0, -0.5 / s0, -0.5 / s0, 0.5 / s0, 1 / s1, -1 / s1, 0.0, 0.0])
    torch.testing.assert_close(out, expected)
    unscaled = group_advantages(rewards, group_size=4, scale=False)
    torch.testing.assert_close(unscaled, torch.tensor([0.5, -0.5, -0.5, 0.5, 1.0, -1.0, 0.0, 0.0]))


def test_group_advantages_constant_group_is_zero_and_groups_are_independent():
    # a group where every completion scored the same carries no signal; the groups are consecutive
    out = group_advantages(torch.tensor([3.0, 3.0, 0.0, 1.0]), group_size=2)
    # group 1: mean 0.5, unbiased std sqrt(0.5) = 0.707107
    s = math.sqrt(0.5) + 1e-4
    torch.testing.assert_close(out, torch.tensor([0.0, 0.0, -0.5 / s, 0.5 / s]))


def test_group_advantages_validates():
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(6), group_size=4)
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(6), group_size=1)
    torch.testing.assert_close(group_advantages(torch.tensor([1.0, 2.0]), 1, scale=False), torch.zeros(2))


def test_fixed_kl_controller():
    controller = FixedKLController(kl_coef=0.2)
    controller.update(kl=100.0, n_steps=1000)
    assert controller.value == 0.2
    controller.load_state_dict({"value": 0.3})
    assert controller.state_dict() == {"value": 0.3}


def test_adaptive_kl_controller_by_hand():
    controller = AdaptiveKLController(kl_coef=0.1, target=6.0, horizon=10000)
    controller.update(kl=9.0, n_steps=256)
    # e = clip(9/6 - 1 = 0.5, -0.2, 0.2) = 0.2; 0.1 · (1 + 0.2 · 256 / 10000) = 0.1 · 1.00512 = 0.100512
    assert controller.value == pytest.approx(0.100512)
    controller.update(kl=5.4, n_steps=1000)
    # e = 5.4/6 - 1 = -0.1 (inside the clip); 0.100512 · (1 - 0.1 · 0.1) = 0.100512 · 0.99 = 0.09950688
    assert controller.value == pytest.approx(0.09950688)
    restored = AdaptiveKLController(kl_coef=0.5)
    restored.load_state_dict(controller.state_dict())
    assert restored.value == pytest.approx(0.09950688)


def test_kl_controllers_validate():
    with pytest.raises(ValueError, match="kl_coef"):
        FixedKLController(kl_coef=-1.0)
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(target=0.0)
    with pytest.raises(ValueError, match="horizon"):
        AdaptiveKLController(horizon=0)
