"""PPO policy and value losses and the KL estimators against hand-worked numbers."""

import math

import pytest
import torch

from lightft.losses.ppo import PPOLoss, kl_penalty, policy_loss, value_loss


def test_policy_loss_at_ratio_one_is_minus_mean_advantage():
    advantages = torch.tensor([[1.0, -2.0, 3.0], [0.5, 9.0, 9.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -1.0, -1.0]])
    loss, clipfrac, approx_kl = policy_loss(logprobs, logprobs.clone(), advantages, mask, clip_range=0.2)
    # ratio 1: -(1 - 2 + 3 + 0.5) / 4 = -0.625; the 9s are outside the mask
    assert loss.item() == pytest.approx(-0.625)
    assert clipfrac.item() == 0.0 and approx_kl.item() == 0.0


def test_policy_loss_clipping_by_hand():
    old = torch.zeros(1, 4)
    logprobs = torch.tensor([[0.5, 0.5, -0.5, -0.5]], requires_grad=True)
    advantages = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    loss, clipfrac, approx_kl = policy_loss(logprobs, old, advantages, mask, clip_range=0.2)
    # ratio e^0.5 = 1.648721, e^-0.5 = 0.606531; pg = max(-A r, -A clip(r, 0.8, 1.2)):
    #   A = +1, r = 1.6487: max(-1.6487, -1.2) = -1.2        (clipped)
    #   A = -1, r = 1.6487: max(1.6487, 1.2)   = 1.648721    (unclipped)
    #   A = +1, r = 0.6065: max(-0.6065, -0.8) = -0.606531   (unclipped)
    #   A = -1, r = 0.6065: max(0.6065, 0.8)   = 0.8         (clipped)
    # mean = (-1.2 + 1.648721 - 0.606531 + 0.8) / 4 = 0.160548; clipfrac 2/4; approx_kl = 0.5 · 0.5² = 0.125
    up, down = math.exp(0.5), math.exp(-0.5)
    assert loss.item() == pytest.approx((-1.2 + up - down + 0.8) / 4, rel=1e-6)
    assert clipfrac.item() == pytest.approx(0.5) and approx_kl.item() == pytest.approx(0.125)
    assert not clipfrac.requires_grad and not approx_kl.requires_grad
    loss.backward()
    # clipped tokens get no gradient; unclipped ones d(-A r)/dlp / 4 = -A r / 4
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0, up / 4, -down / 4, 0.0]]))


def test_value_loss_clipping_by_hand():
    values = torch.tensor([[1.0, 1.0, 7.0]], requires_grad=True)
    old_values = torch.tensor([[0.5, 0.5, 0.0]])
    returns = torch.tensor([[0.0, 2.0, 0.0]])
    mask = torch.tensor([[True, True, False]])
    loss, clipfrac = value_loss(values, old_values, returns, mask, clip_range_value=0.2)
    # clipped prediction 0.5 + clip(0.5, -0.2, 0.2) = 0.7
    #   R = 0: max((1 - 0)², (0.7 - 0)²) = max(1, 0.49) = 1     (unclipped)
    #   R = 2: max((1 - 2)², (0.7 - 2)²) = max(1, 1.69) = 1.69  (clipped)
    # 0.5 · (1 + 1.69) / 2 = 0.6725; clipfrac 1/2; the third token is outside the mask
    assert loss.item() == pytest.approx(0.6725, rel=1e-6)
    assert clipfrac.item() == pytest.approx(0.5)
    loss.backward()
    # unclipped: d 0.5 · (v - R)² / 2 = (1 - 0) / 2 = 0.5; clipped: no gradient
    torch.testing.assert_close(values.grad, torch.tensor([[0.5, 0.0, 0.0]]))


def test_kl_estimators_by_hand():
    logprobs = torch.tensor([[math.log(0.5), math.log(0.25)]])
    ref_logprobs = torch.tensor([[math.log(0.25), math.log(0.5)]])
    # log ratio = ±log 2 = ±0.693147
    # k1 = ±0.693147; k2 = 0.5 · 0.480453 = 0.240227 for both
    # k3 = e^{-lr} - 1 + lr: lr = log 2 → 0.5 - 1 + 0.693147 = 0.193147; lr = -log 2 → 2 - 1 - 0.693147 = 0.306853
    ln2 = math.log(2)
    torch.testing.assert_close(kl_penalty(logprobs, ref_logprobs), torch.tensor([[ln2, -ln2]]))
    torch.testing.assert_close(kl_penalty(logprobs, ref_logprobs, "k2"), torch.tensor([[0.5 * ln2**2] * 2]))
    torch.testing.assert_close(kl_penalty(logprobs, ref_logprobs, "k3"), torch.tensor([[0.5 - 1 + ln2, 2 - 1 - ln2]]))


def test_k3_is_non_negative_and_zero_at_equality():
    torch.manual_seed(0)
    logprobs, ref_logprobs = -5 * torch.rand(4, 16), -5 * torch.rand(4, 16)
    assert (kl_penalty(logprobs, ref_logprobs, "k3") >= 0).all()
    assert (kl_penalty(logprobs, logprobs, "k3") == 0).all()


def test_kl_unknown_estimator():
    with pytest.raises(ValueError, match="estimator"):
        kl_penalty(torch.zeros(1, 1), torch.zeros(1, 1), "k4")


def rollout():
    torch.manual_seed(0)
    shape = (2, 5)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    return {
        "logprobs": -torch.rand(shape),
        "old_logprobs": -torch.rand(shape),
        "advantages": torch.randn(shape),
        "values": torch.randn(shape),
        "old_values": torch.randn(shape),
        "returns": torch.randn(shape),
        "mask": mask,
    }


def test_ppo_loss_combines_policy_and_value_terms():
    batch = rollout()
    out = PPOLoss(clip_range=0.2, clip_range_value=0.3, vf_coef=0.5)(**batch)
    pg, clipfrac, approx_kl = policy_loss(
        batch["logprobs"], batch["old_logprobs"], batch["advantages"], batch["mask"], 0.2
    )
    vf, value_clipfrac = value_loss(batch["values"], batch["old_values"], batch["returns"], batch["mask"], 0.3)
    assert set(out) == {"loss", "policy_loss", "value_loss", "clipfrac", "value_clipfrac", "approx_kl"}
    torch.testing.assert_close(out["loss"], pg + 0.5 * vf)
    torch.testing.assert_close(out["value_clipfrac"], value_clipfrac)
    torch.testing.assert_close(out["approx_kl"], approx_kl)
    assert out["loss"].item() != pytest.approx(pg.item())


def test_ppo_loss_without_values_has_no_value_term():
    batch = rollout() | {"values": None, "old_values": None, "returns": None}
    out = PPOLoss()(**batch)
    assert set(out) == {"loss", "policy_loss", "clipfrac", "approx_kl"}
    torch.testing.assert_close(out["loss"], out["policy_loss"])


def test_ppo_loss_validates():
    with pytest.raises(ValueError, match="returns"):
        PPOLoss()(**(rollout() | {"returns": None}))
    with pytest.raises(ValueError, match="clip_range"):
        PPOLoss(clip_range=0.0)
    with pytest.raises(ValueError, match="clip_range_value"):
        PPOLoss(clip_range_value=-1.0)
    with pytest.raises(ValueError, match="vf_coef"):
        PPOLoss(vf_coef=-0.1)
