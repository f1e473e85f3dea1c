import pytest
import torch

from lightft import PPOModule, PromptDataModule
from lightft.data.sources import DatasetSpec
from lightft.errors import LightFTError
from lightft.generation import GenerationSettings
from lightft.modules.ppo import PPOSettings, RewardShaping
from lightft.optim import OptimizerConfig, SchedulerConfig
from lightft.peft import FullFineTune, LoRA
from lightft.rl.rewards import KeywordReward
from tests.conftest import QUICKSTART
from tests.helpers.preference import MetricLog, trainer


def rl_module(spec, algorithm, **kwargs):
    settings = dict(
        algorithm=algorithm,
        samples_per_prompt=4 if algorithm == "grpo" else 1,
        ppo=PPOSettings(epochs=2, mini_batch_size=8),
        kl_estimator="k3" if algorithm == "grpo" else "k1",
        shaping=RewardShaping(whiten=algorithm == "ppo"),  # scores ~0.08 +- 0.05: on the scale of the KL penalty
    )
    return PPOModule(
        spec,
        reward=KeywordReward("e"),
        # the tiny random model's output head is what limits how far its near-uniform distribution can move
        peft=LoRA(r=8, alpha=16, dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj", "lm_head"]),
        optimizer=OptimizerConfig(lr=1e-2),
        scheduler=SchedulerConfig(name="constant"),
        gradient_checkpointing=False,
        generation=GenerationSettings(max_new_tokens=12, do_sample=True),
        **{**settings, **kwargs},
    )


def prompts(spec, batch_size):
    train = DatasetSpec(str(QUICKSTART / "train.jsonl"), max_examples=256)
    return PromptDataModule(train=train, tokenizer=spec, max_prompt_length=48, batch_size=batch_size)


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_rule_reward_rises_while_kl_stays_bounded(tmp_path, tiny_spec, algorithm):
    torch.manual_seed(0)
    module = rl_module(tiny_spec, algorithm)
    log = MetricLog()
    batch = 16 if algorithm == "ppo" else 4  # 16 responses per rollout either way
    trainer(tmp_path, max_steps=80, limit_val_batches=0, callbacks=[log]).fit(
        module, datamodule=prompts(tiny_spec, batch)
    )
    rewards = [s["env/reward_mean"] for s in log.steps]
    assert len(rewards) == 20  # 80 optimizer steps = 20 rollouts x 2 epochs x 2 minibatches
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > first + 0.08 and last > 1.8 * first, rewards  # the rule reward at least doubles, from ~0.07
    # KL to the reference is summed over a 12-token response: bounded means well under 3 nats per token
    assert max(s["objective/kl"] for s in log.steps) < 36.0
    expected = {"objective/entropy", "policy/clipfrac", "train/response_length"} | (
        {"critic/loss", "critic/clipfrac"} if algorithm == "ppo" else set()
    )
    assert expected <= set(log.steps[-1])
    assert not any(key.startswith("val/") for key in log.steps[-1])  # `val/` means validation, not the critic


def test_value_head_trains_and_is_checkpointed(tmp_path, tiny_spec):
    module = rl_module(tiny_spec, "ppo")
    fit = trainer(tmp_path, max_steps=2, limit_val_batches=0)
    fit.fit(module, datamodule=prompts(tiny_spec, 16))
    assert module.value_head.weight.abs().sum() > 0
    fit.save_checkpoint(tmp_path / "ppo.ckpt")
    saved = torch.load(tmp_path / "ppo.ckpt", weights_only=True)
    assert {"value_head.weight", "value_head.bias"} <= set(saved["state_dict"])
    assert saved["kl_controller"]["value"] == pytest.approx(0.05)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(algorithm="grpo", samples_per_prompt=1), "samples_per_prompt"),
        (dict(generation=GenerationSettings(do_sample=False)), "do_sample"),
        (dict(peft=FullFineTune()), "peft"),
    ],
)
def test_impossible_settings_fail_at_construction(tiny_spec, kwargs, key):
    with pytest.raises(LightFTError, match=key):
        PPOModule(tiny_spec, reward=KeywordReward("e"), **kwargs)
