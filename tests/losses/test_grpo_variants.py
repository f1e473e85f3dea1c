"""GRPO loss variants as TRL names them (`ppo.loss_type`: grpo, bnpo, dr_grpo, dapo) against hand-worked numbers."""

import math
from types import SimpleNamespace

import pytest
import torch

from lightft import PPOModule
from lightft.cli import LightFTCLI
from lightft.errors import LightFTError
from lightft.generation import GenerationSettings
from lightft.losses.logprobs import masked_mean
from lightft.losses.ppo import PPOLoss, aggregate, kl_penalty, policy_loss
from lightft.modules.ppo import PPOSettings
from lightft.rl.advantages import group_advantages
from lightft.rl.rewards import KeywordReward
from tests.conftest import ROOT
from tests.helpers.preference import MetricLog, trainer
from tests.modules.test_ppo import prompts, rl_module

# Two responses of 1 and 3 tokens, padded to T = 4 (max_new_tokens = 4). At ratio 1 the per-token loss is -A, so
# A = -l gives l = [[a], [b, c, d]] = [[2], [1, 4, 7]]; the 9s are outside the mask. S = a + b + c + d = 14.
MASK = torch.tensor([[True, False, False, False], [True, True, True, False]])
LOSS = torch.tensor([[2.0, 9.0, 9.0, 9.0], [1.0, 4.0, 7.0, 9.0]])
MAX_LENGTH = 4
# dapo: the two responses are one minibatch of a 4-response rollout holding 12 response tokens: 12 · 2/4 = 6
ROLLOUT_SHARE = 6.0

EXPECTED = {
    "grpo": (2 + (1 + 4 + 7) / 3) / 2,  # per-response means 2 and 4, averaged: 3.0
    "bnpo": (2 + 1 + 4 + 7) / 4,  # token mean over the minibatch: 14 / 4 = 3.5
    "dr_grpo": (2 + 1 + 4 + 7) / (2 * MAX_LENGTH),  # constant normaliser, responses x max length: 14 / 8 = 1.75
    "dapo": (2 + 1 + 4 + 7) / ROLLOUT_SHARE,  # token mean over the rollout: 14 / 6 = 2.333333
}
# d loss / d lp at ratio 1 is -A · w = l · w, w the weight of the token: grpo 1/2 for the 1-token response and
# 1/(2 · 3) = 1/6 for the 3-token one; bnpo 1/4 each; dr_grpo 1/8 each; dapo 1/6 each
WEIGHTS = {
    "grpo": torch.tensor([[1 / 2, 0, 0, 0], [1 / 6, 1 / 6, 1 / 6, 0]]),
    "bnpo": torch.tensor([[1 / 4, 0, 0, 0], [1 / 4, 1 / 4, 1 / 4, 0]]),
    "dr_grpo": torch.tensor([[1 / 8, 0, 0, 0], [1 / 8, 1 / 8, 1 / 8, 0]]),
    "dapo": torch.tensor([[1 / 6, 0, 0, 0], [1 / 6, 1 / 6, 1 / 6, 0]]),
}
KEY = "model.init_args.ppo"


def grpo_module(tiny_spec, **ppo):
    return PPOModule(
        tiny_spec,
        reward=KeywordReward("e"),
        algorithm="grpo",
        samples_per_prompt=4,
        generation=GenerationSettings(max_new_tokens=MAX_LENGTH, do_sample=True),
        ppo=PPOSettings(**ppo),
    )


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_the_four_aggregations_by_hand(loss_type):
    num_tokens = ROLLOUT_SHARE if loss_type == "dapo" else None
    assert aggregate(LOSS, MASK, loss_type, MAX_LENGTH, num_tokens).item() == pytest.approx(EXPECTED[loss_type])
    # through the policy loss at ratio 1, with the gradient of each token
    logprobs = torch.tensor([[-1.0, -2.0, -0.5, -1.0], [-3.0, -1.0, -1.0, -2.0]], requires_grad=True)
    loss, clipfrac, approx_kl = policy_loss(
        logprobs, logprobs.detach().clone(), -LOSS, MASK, 0.2,
        loss_type=loss_type, max_length=MAX_LENGTH, num_tokens=num_tokens,
    )  # fmt: skip
    assert loss.item() == pytest.approx(EXPECTED[loss_type])
    assert clipfrac.item() == 0.0 and approx_kl.item() == 0.0
    loss.backward()
    torch.testing.assert_close(logprobs.grad, LOSS * WEIGHTS[loss_type])


def test_the_four_numbers_differ_and_dapo_without_a_rollout_is_bnpo():
    assert len({round(v, 6) for v in EXPECTED.values()}) == 4
    assert aggregate(LOSS, MASK, "dapo").item() == pytest.approx(EXPECTED["bnpo"])
    # an empty response still counts as a response for grpo (TRL: its mean is 0 / max(0, 1))
    empty = torch.cat([MASK, torch.zeros(1, 4, dtype=torch.bool)])
    assert aggregate(torch.cat([LOSS, torch.ones(1, 4)]), empty, "grpo").item() == pytest.approx(6 / 3)


def test_dapo_clips_higher():
    # tokens: ratio 1.25, A = +1 | ratio 0.75, A = -1 | ratio 1.3, A = +1; pg = max(-A r, -A clip(r, 1 - 0.2, 1 + h))
    old = torch.zeros(1, 3)
    logprobs = torch.tensor([[math.log(1.25), math.log(0.75), math.log(1.3)]], requires_grad=True)
    advantages = torch.tensor([[1.0, -1.0, 1.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    dapo = PPOLoss(loss_type="dapo")  # clip_range 0.2, clip_range_high 0.28 by default
    assert dapo.clip_range_high == 0.28
    out = dapo(logprobs, old, advantages, None, None, None, mask)
    # h = 0.28: 1.25 < 1.28 is not clipped: max(-1.25, -1.25) = -1.25;
    #           0.75 < 0.8 is clipped (A < 0): max(0.75, 0.8) = 0.8;  1.3 > 1.28 is clipped: max(-1.3, -1.28) = -1.28
    # (-1.25 + 0.8 - 1.28) / 3 = -0.576667; clipfrac 2/3; only the first token has a gradient, -A r / 3 = -1.25 / 3
    assert out["loss"].item() == pytest.approx((-1.25 + 0.8 - 1.28) / 3, rel=1e-6)
    assert out["clipfrac"].item() == pytest.approx(2 / 3)
    out["loss"].backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[-1.25 / 3, 0.0, 0.0]]))

    logprobs.grad = None
    symmetric = PPOLoss(loss_type="bnpo")  # clip_range 0.2 both ways
    out = symmetric(logprobs, old, advantages, None, None, None, mask)
    # h = 0.2: 1.25 > 1.2 is clipped: -1.2; 0.75: 0.8 as before; 1.3: -1.2. (-1.2 + 0.8 - 1.2) / 3 = -0.533333
    assert out["loss"].item() == pytest.approx((-1.2 + 0.8 - 1.2) / 3, rel=1e-6)
    assert out["clipfrac"].item() == pytest.approx(1.0)
    out["loss"].backward()
    torch.testing.assert_close(logprobs.grad, torch.zeros(1, 3))
    # an explicit clip_range_high on any loss type is the same asymmetric clip
    explicit = policy_loss(logprobs, old, advantages, mask, 0.2, clip_range_high=0.28)[0]
    assert explicit.item() == pytest.approx((-1.25 + 0.8 - 1.28) / 3, rel=1e-6)


def test_dr_grpo_advantages_are_only_mean_centred(tiny_spec):
    scores = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 4.0, 6.0, 8.0])  # two groups of 4
    rollout = SimpleNamespace(response_mask=torch.ones(8, 2, dtype=torch.bool))
    # group 1: mean 0.25 -> [0.75, -0.25, -0.25, -0.25]; group 2: mean 5 -> [-3, -1, 1, 3]; no std division
    unscaled = torch.tensor([0.75, -0.25, -0.25, -0.25, -3.0, -1.0, 1.0, 3.0])
    advantages, returns = grpo_module(tiny_spec, loss_type="dr_grpo").advantages(rollout, None, None, scores)
    assert returns is None
    torch.testing.assert_close(advantages, unscaled[:, None].expand(8, 2))
    # every other loss type divides by the unbiased group std + 1e-4: sqrt(0.75 / 3) = 0.5 and sqrt(20 / 3) = 2.581989
    std = torch.tensor([0.5] * 4 + [math.sqrt(20 / 3)] * 4)
    for loss_type in ("grpo", "bnpo", "dapo"):
        advantages, _ = grpo_module(tiny_spec, loss_type=loss_type).advantages(rollout, None, None, scores)
        torch.testing.assert_close(advantages[:, 0], unscaled / (std + 1e-4))


def test_default_reproduces_the_loss_before_loss_types(tiny_spec):
    torch.manual_seed(0)
    mask = torch.arange(6)[None, :] < torch.tensor([[6], [2], [4], [1]])  # (4, 6), ragged responses
    old, ref = -3 * torch.rand(4, 6), -3 * torch.rand(4, 6)
    advantages = torch.randn(4, 6) * mask
    new_before = (old + 0.4 * torch.randn(4, 6)).requires_grad_()
    new_after = new_before.detach().clone().requires_grad_()
    # the pre-change formula: token means over the minibatch, symmetric clip, KL term a token mean too
    ratio = torch.exp(new_before - old)
    pg = masked_mean(torch.max(-advantages * ratio, -advantages * torch.clamp(ratio, 1 - 0.2, 1 + 0.2)), mask)
    before = pg + 0.05 * masked_mean(kl_penalty(new_before, ref, "k3"), mask)
    before.backward()

    module = grpo_module(tiny_spec)
    assert module.ppo.loss_type == "bnpo" and module.loss.clip_range_high == module.loss.clip_range == 0.2
    num_tokens = mask.sum() / 4 * 4  # what `update` passes; bnpo ignores it
    out = module.loss(new_after, old, advantages, None, None, None, mask, num_tokens)
    after = out["loss"] + 0.05 * module.loss.aggregate(kl_penalty(new_after, ref, "k3"), mask, num_tokens)
    after.backward()
    assert torch.equal(after, before) and torch.equal(new_after.grad, new_before.grad)
    # and the group advantages of the default are those of before: scaled by the group std
    scores = torch.tensor([0.1, 0.5, 0.2, 0.9, 0.0, 0.0, 1.0, 0.3])
    grouped = scores.view(-1, 4)
    expected = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).reshape(-1)
    rollout = SimpleNamespace(response_mask=torch.ones(8, 1, dtype=torch.bool))
    advantages, _ = module.advantages(rollout, None, None, scores)
    assert torch.equal(advantages[:, 0], expected) and torch.equal(group_advantages(scores, 4), expected)


def test_settings_reach_the_loss(tiny_spec):
    assert grpo_module(tiny_spec, loss_type="dapo").loss.clip_range_high == 0.28
    assert grpo_module(tiny_spec, loss_type="dapo", clip_range_high=0.3).loss.clip_range_high == 0.3
    assert grpo_module(tiny_spec, loss_type="dr_grpo").loss.max_length == MAX_LENGTH
    grpo = grpo_module(tiny_spec, loss_type="grpo", clip_range_high=0.25).loss
    assert (grpo.loss_type, grpo.clip_range, grpo.clip_range_high) == ("grpo", 0.2, 0.25)
    # PPO takes an asymmetric clip too (its aggregation stays bnpo)
    ppo = PPOModule(tiny_spec, reward=KeywordReward("e"), ppo=PPOSettings(clip_range_high=0.28)).loss
    assert (ppo.loss_type, ppo.clip_range_high) == ("bnpo", 0.28)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(algorithm="grpo", ppo=PPOSettings(loss_type="dapo", clip_range_high=0.2)), "ppo.clip_range_high"),
        (dict(algorithm="grpo", ppo=PPOSettings(loss_type="dapo", clip_range=0.3)), "ppo.clip_range_high"),
        (dict(algorithm="grpo", ppo=PPOSettings(clip_range_high=-0.1)), "ppo.clip_range_high"),
        (dict(algorithm="grpo", ppo=PPOSettings(loss_type="token_sum")), "ppo.loss_type"),
        (dict(algorithm="ppo", ppo=PPOSettings(loss_type="dr_grpo")), "ppo.loss_type"),
    ],
)
def test_bad_loss_settings_fail_at_construction(tiny_spec, kwargs, key):
    samples = 4 if kwargs["algorithm"] == "grpo" else 1
    with pytest.raises(LightFTError, match=f"^model.init_args.{key}: ") as error:
        PPOModule(tiny_spec, reward=KeywordReward("e"), samples_per_prompt=samples, **kwargs)
    assert "\n" not in str(error.value)


def test_loss_refuses_what_it_cannot_compute():
    with pytest.raises(ValueError, match="loss_type"):
        PPOLoss(loss_type="token_sum")
    with pytest.raises(ValueError, match="max_length"):
        PPOLoss(loss_type="dr_grpo")
    with pytest.raises(ValueError, match="clip_range_high"):
        PPOLoss(clip_range_high=0.0)


def test_yaml_key_parses(monkeypatch):
    monkeypatch.chdir(ROOT)
    args = ["--config", "configs/debug/tiny_grpo.yaml", "--model.init_args.ppo.loss_type", "dapo",
            "--model.init_args.ppo.clip_range_high", "0.3", "--trainer.accelerator", "cpu"]  # fmt: skip
    cli = LightFTCLI(args=args, run=False)
    assert cli.model.ppo == PPOSettings(epochs=1, mini_batch_size=8, loss_type="dapo", clip_range_high=0.3)
    assert (cli.model.loss.loss_type, cli.model.loss.clip_range_high) == ("dapo", 0.3)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_tiny_grpo_trains_with_each_loss_type(tmp_path, tiny_spec, loss_type, monkeypatch):
    import lightft.losses.ppo as ppo_losses

    calls = []  # (response tokens of the minibatch, dapo's normaliser) of every aggregation

    def spy(per_token, mask, loss_type, max_length=None, num_tokens=None):
        calls.append((int(mask.sum()), None if num_tokens is None else float(num_tokens)))
        return aggregate(per_token, mask, loss_type, max_length, num_tokens)

    monkeypatch.setattr(ppo_losses, "aggregate", spy)
    module = rl_module(tiny_spec, "grpo", ppo=PPOSettings(epochs=1, mini_batch_size=4, loss_type=loss_type))
    log = MetricLog()
    # one rollout of 2 prompts x 4 samples = 8 responses, 2 minibatches of 4: 2 optimizer steps
    trainer(tmp_path, max_steps=2, limit_val_batches=0, callbacks=[log]).fit(module, datamodule=prompts(tiny_spec, 2))
    assert len(log.steps) == 1 and math.isfinite(log.steps[0]["train/loss"])
    assert len(calls) == 4  # policy term and KL term of each minibatch
    policy_calls = calls[::2]
    assert calls[1::2] == policy_calls  # the KL term is aggregated as the policy term
    rollout_tokens = sum(n for n, _ in policy_calls)
    assert [share for _, share in policy_calls] == [pytest.approx(rollout_tokens / 2)] * 2  # 4 of 8 rows each
