"""PPOModule: on-policy RL from a reward (a trained reward model or a Python function), PPO or GRPO.

One training step = one rollout: sample responses to a batch of prompts -> score them -> log-probs of the policy,
the reference (adapter disabled) and, for PPO, the value head -> advantages (PPO: per-token KL penalty in the reward,
GAE over the critic's values; GRPO: group-relative scores of several samples per prompt, KL in the loss) -> several
epochs of clipped updates over minibatches (manual optimisation). `trainer.max_steps` counts optimizer steps.
GRPO's loss variants follow TRL's `loss_type` (`ppo.loss_type`: `bnpo`, the default, `grpo`, `dr_grpo`, `dapo`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightft.data.batches import PromptBatch, TokenBatch
from lightft.data.prompt_datamodule import PromptDataModule
from lightft.errors import LightFTError
from lightft.generation import GenerationSettings
from lightft.losses.logprobs import masked_mean
from lightft.losses.ppo import DAPO_CLIP_RANGE_HIGH, LOSS_TYPES, LossType, PPOLoss, kl_penalty
from lightft.models.loading import ModelSpec
from lightft.modules.base import LightFTModule
from lightft.modules.method import Method
from lightft.peft.full import FullFineTune
from lightft.rl.advantages import AdaptiveKLController, FixedKLController, gae, group_advantages, whiten_advantages
from lightft.rl.rewards import RewardFunction, score
from lightft.rl.rollout import Rollout, sample

KEY = "model.init_args"


@dataclass(frozen=True)
class PPOSettings:
    """How each rollout is learned from.

    Args:
        epochs: Passes over the rollout.
        mini_batch_size: Responses per optimizer step (a divisor of the rollout size).
        clip_range: PPO's ratio clip c: the ratio is kept in [1 - c, 1 + c].
        clip_range_value: Clip of the value prediction around its rollout value (PPO).
        vf_coef: Weight of the value loss (PPO).
        gamma: Discount per token (PPO's GAE).
        lam: GAE's lambda.
        whiten_advantages: Normalise advantages to mean 0, std 1 over the rollout's response tokens (PPO).
        max_grad_norm: Clip the gradient norm before every optimizer step (None: no clipping).
        loss_type: How the per-token policy loss (and GRPO's KL term) is reduced over a minibatch, named as TRL's
            GRPO `loss_type`: `bnpo` (default, lightft's loss before loss types existed): the token mean over the
            minibatch; `grpo`: each response's token mean, averaged over responses (length bias: a short response's
            tokens weigh more); `dr_grpo` (Dr. GRPO): the token sum / (responses x `generation.max_new_tokens`), with
            group advantages only mean-centred, not divided by the group's std; `dapo` (DAPO): the token mean over
            the whole rollout, all ranks' (each minibatch normalised by the rollout's tokens times its share of the
            rows), with clip-higher. PPO (`algorithm: ppo`) takes only `bnpo`.
        clip_range_high: The ratio's upper clip: it is kept in [1 - clip_range, 1 + clip_range_high] (TRL's
            `epsilon_high`; PPO and every loss type). None: `clip_range` (symmetric), except `dapo`: 0.28, DAPO's
            clip-higher; `dapo` needs it above `clip_range`.
    """

    epochs: int = 4
    mini_batch_size: int = 4
    clip_range: float = 0.2
    clip_range_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True
    max_grad_norm: float | None = 1.0
    loss_type: LossType = "bnpo"
    clip_range_high: float | None = None

    @property
    def upper_clip(self) -> float:
        """The clip above 1 of the ratio in effect: `clip_range_high`, else 0.28 for `dapo`, else `clip_range`."""
        if self.clip_range_high is not None:
            return self.clip_range_high
        return DAPO_CLIP_RANGE_HIGH if self.loss_type == "dapo" else self.clip_range


@dataclass(frozen=True)
class RewardShaping:
    """What is done to the reward function's scores before they are learned from.

    Args:
        missing_eos_penalty: Subtracted from a response that never ends (hits `max_new_tokens`).
        length_penalty: Subtracted per response token.
        clip: Clip scores to [-clip, clip].
        whiten: Normalise scores to mean 0, std 1 over the rollout (PPO).
    """

    missing_eos_penalty: float | None = None
    length_penalty: float = 0.0
    clip: float | None = None
    whiten: bool = False


@dataclass(frozen=True)
class Evaluation:
    """Per-token quantities of a rollout under one model: (N, R) each."""

    logprobs: Tensor
    entropy: Tensor
    values: Tensor | None


class PPOModule(LightFTModule):
    """PPO (with a value-head critic) or GRPO (critic-free, group sampling) from a reward.

    Args:
        model: Which pretrained model to start from (path, dtype, GGUF file, ...).
        reward: Scores completions: `lightft.rl.rewards.RewardModelScorer` (a trained reward model), a rule reward
            (`KeywordReward`, `JSONMatchReward`) or your own `RewardFunction`.
        generation: Sampling settings of the rollouts (do_sample must be true).
        algorithm: `ppo` (value head, GAE, KL penalty in the reward) or `grpo` (group-relative advantages, KL in the
            loss, no critic).
        samples_per_prompt: Responses sampled per prompt (GRPO's group size; >= 2 for GRPO).
        ppo: Epochs, minibatches, clipping (`clip_range_high`: asymmetric), GAE, gradient clipping, and GRPO's
            `loss_type` (`bnpo`, `grpo`, `dr_grpo`, `dapo`).
        kl_controller: KL coefficient: `lightft.rl.FixedKLController` (default, 0.05) or `AdaptiveKLController`.
        kl_estimator: Per-token KL estimator: `k1` (log-ratio), `k2`, `k3` (unbiased, non-negative; GRPO's).
        shaping: Penalties, clipping and whitening applied to the scores.
        **kwargs: `peft` (its disabled adapter is the KL reference: full fine-tuning is not supported, it would need
            a second full copy), `optimizer`, `scheduler` (over optimizer steps), `gradient_checkpointing`,
            `compute`: see `LightFTModule`.
    """

    method = Method(
        data=PromptDataModule,
        batch=PromptBatch,
        reference="adapter",
        rollout=True,
        validation_metrics=("eval/reward_mean",),
    )

    def __init__(
        self,
        model: ModelSpec,
        reward: RewardFunction,
        *,
        generation: GenerationSettings = GenerationSettings(max_new_tokens=64, do_sample=True),
        algorithm: Literal["ppo", "grpo"] = "ppo",
        samples_per_prompt: int = 1,
        ppo: PPOSettings = PPOSettings(),
        kl_controller: FixedKLController | AdaptiveKLController | None = None,
        kl_estimator: Literal["k1", "k2", "k3"] = "k1",
        shaping: RewardShaping = RewardShaping(),
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        _check_settings(self.peft, generation, algorithm, samples_per_prompt)
        _check_loss(ppo, algorithm)
        self.automatic_optimization = False
        self.reward, self.generation = reward, generation
        self.algorithm, self.samples_per_prompt = algorithm, samples_per_prompt
        self.ppo, self.kl_estimator = ppo, kl_estimator
        self.kl_controller = kl_controller if kl_controller is not None else FixedKLController()
        self.shaping = shaping
        self.loss = PPOLoss(
            ppo.clip_range,
            ppo.clip_range_value,
            ppo.vf_coef,
            clip_range_high=ppo.upper_clip,
            loss_type=ppo.loss_type,
            max_length=generation.max_new_tokens,
        )
        self.value_head: nn.Module | None = None
        self.latest_rollout: tuple[Rollout, Tensor] | None = None  # and its raw scores: `rollout_records`

    def memory_plan(self, examples: int, seq_len: int, notes: list[str]) -> dict[str, Any]:
        """The estimate's shapes: rollouts of prompts x samples at prompt + `max_new_tokens`, updates of a minibatch,
        the critic's hidden states, a reward model's weights.
        """  # noqa: D205
        rollout = examples * self.samples_per_prompt
        batch = min(rollout, self.ppo.mini_batch_size)
        notes.append(f"PPO: rollouts of {rollout} sequences of prompt + max_new_tokens; updates of {batch}")
        weight_bytes = getattr(self.reward, "weight_bytes", None)
        reward_bytes = float(weight_bytes()) if callable(weight_bytes) else 0.0
        if reward_bytes:
            name = getattr(self.reward, "path", type(self.reward).__name__)
            notes.append(f"PPO: the reward model {name} ({reward_bytes / 2**20:,.1f} MiB of weights at its dtype)")
        length = seq_len + int(self.generation.max_new_tokens or 0)
        return {"batch_size": batch, "seq_len": length, "rollout_rows": rollout, "critic": self.algorithm == "ppo",
                "reward_model_bytes": reward_bytes}  # fmt: skip

    def configure_model(self) -> None:
        """The policy, and for PPO a value head on its last hidden state (zero-initialised)."""
        if self.model is not None:
            return
        super().configure_model()
        if self.algorithm == "ppo":
            hidden = self.model.config.hidden_size
            self.value_head = nn.Linear(hidden, 1, dtype=self.model.dtype, device=self.model.device)
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)
        if hasattr(self.reward, "to"):
            self.reward.to(self.device)

    # ---- rollout ------------------------------------------------------------------------------------------------

    def evaluate(self, rollout: Rollout, with_values: bool, with_entropy: bool = False) -> Evaluation:
        """Log-probs of every response token (and their entropy, the critic's values) under the current policy.

        Only response positions reach the LM head; entropy (a metric) is zero unless asked for.
        """
        start = rollout.prompt_length - 1  # position t predicts token t + 1: the first response token's predictor
        labels = torch.full_like(rollout.sequences, -100)
        labels[:, start + 1 :] = rollout.sequences[:, start + 1 :].masked_fill(~rollout.response_mask, -100)
        inputs = TokenBatch(input_ids=rollout.sequences, labels=labels, attention_mask=rollout.attention_mask,
                            position_ids=rollout.position_ids())  # fmt: skip
        output = self.lm_logps(self.model, inputs, entropy=with_entropy, keep_hidden=with_values)
        logprobs = output.logps.logps[:, start:]  # (N, R)
        entropy = output.logps.entropy[:, start:] if output.logps.entropy is not None else torch.zeros_like(logprobs)
        values = None
        if with_values:
            hidden = output.hidden[:, start:-1]  # (N, R, H): the state before each response token
            values = self.value_head(hidden).squeeze(-1).float()
        return Evaluation(logprobs, entropy, values)

    def scores(self, rollout: Rollout) -> tuple[Tensor, Tensor]:
        """(raw, shaped): (N,) scores of a rollout's responses as the reward gave them, and as learned from."""
        raw = score(self.reward, rollout.prompts, rollout.completions, rollout.references).to(self.device)
        shaped = raw - self.shaping.length_penalty * rollout.response_lengths.float()
        if self.shaping.missing_eos_penalty is not None:
            shaped = shaped - self.shaping.missing_eos_penalty * (~rollout.ended).float()
        if self.shaping.clip is not None:
            shaped = shaped.clamp(-self.shaping.clip, self.shaping.clip)
        if self.shaping.whiten and len(shaped) > 1:
            shaped = (shaped - shaped.mean()) / (shaped.std() + 1e-8)
        return raw, shaped

    @torch.no_grad()
    def advantages(self, rollout: Rollout, old: Evaluation, kl: Tensor, scores: Tensor) -> tuple[Tensor, Tensor | None]:
        """(advantages (N, R), returns (N, R) or None for GRPO); `dr_grpo`'s group advantages are not std-scaled."""
        mask = rollout.response_mask
        if self.algorithm == "grpo":
            scale = self.ppo.loss_type != "dr_grpo"  # Dr. GRPO: the std division biases towards easy/hard prompts
            per_sequence = group_advantages(scores, self.samples_per_prompt, scale=scale)  # (N,)
            return per_sequence[:, None].expand_as(mask) * mask, None
        rewards = -self.kl_controller.value * kl  # (N, R): KL penalty on every token, score on the last
        last = rollout.response_lengths - 1
        rewards[torch.arange(len(last), device=self.device), last] += scores
        advantages, returns = gae(rewards, old.values, mask, self.ppo.gamma, self.ppo.lam)
        if self.ppo.whiten_advantages:
            advantages = whiten_advantages(advantages, mask)
        return advantages, returns

    # ---- step ---------------------------------------------------------------------------------------------------

    def training_step(self, batch: PromptBatch, batch_idx: int) -> None:
        """Rollout -> scores -> advantages -> `ppo.epochs` passes of minibatch updates."""
        rollout = sample(self.model, self.tokenizer, batch, self.generation, self.samples_per_prompt)
        raw, scores = self.scores(rollout)
        self.latest_rollout = (rollout, raw)
        with torch.no_grad():
            old = self.evaluate(rollout, with_values=self.algorithm == "ppo", with_entropy=True)
            with self.peft.disabled(self.model):
                reference = self.evaluate(rollout, with_values=False).logprobs
        kl = kl_penalty(old.logprobs, reference, self.kl_estimator) * rollout.response_mask  # (N, R)
        advantages, returns = self.advantages(rollout, old, kl, scores)
        stats = self.update(rollout, old, reference, advantages, returns)
        mean_kl = kl.sum(-1).mean()
        self.kl_controller.update(float(mean_kl), len(scores))
        self.log_rollout(rollout, raw, mean_kl, old, stats)

    def update(
        self, rollout: Rollout, old: Evaluation, reference: Tensor, advantages: Tensor, returns: Tensor | None
    ) -> dict[str, Tensor]:
        """`ppo.epochs` shuffled passes of clipped minibatch updates; mean statistics of the last pass."""
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        size = self.ppo.mini_batch_size
        n = len(rollout.sequences)
        tokens_per_row = rollout.response_mask.sum() / n  # `dapo`: a minibatch's share of the rollout's tokens
        if self.ppo.loss_type == "dapo" and self.trainer.world_size > 1:  # TRL: of the rollouts of every rank
            tokens_per_row = self.trainer.strategy.reduce(tokens_per_row, reduce_op="mean")
        stats: list[dict[str, Tensor]] = []
        for _ in range(self.ppo.epochs):
            stats = []
            for rows in torch.randperm(n, device=self.device).split(size):
                part = _select(rollout, rows)
                new = self.evaluate(part, with_values=returns is not None)
                num_tokens = tokens_per_row * len(rows)
                out = self.loss(
                    new.logprobs,
                    old.logprobs[rows],
                    advantages[rows],
                    new.values,
                    None if old.values is None else old.values[rows],
                    None if returns is None else returns[rows],
                    part.response_mask,
                    num_tokens,
                )
                if self.algorithm == "grpo":  # KL to the reference as a loss term, aggregated as the policy term (TRL)
                    per_token_kl = kl_penalty(new.logprobs, reference[rows], self.kl_estimator)
                    kl = self.loss.aggregate(per_token_kl, part.response_mask, num_tokens)
                    out["loss"] = out["loss"] + self.kl_controller.value * kl
                optimizer.zero_grad()
                self.manual_backward(out["loss"])
                if self.ppo.max_grad_norm is not None:
                    self.clip_gradients(optimizer, gradient_clip_val=self.ppo.max_grad_norm)
                optimizer.step()
                scheduler.step()
                stats.append({k: v.detach() for k, v in out.items()})
        return {k: torch.stack([s[k] for s in stats]).mean() for k in stats[0]}

    def log_rollout(
        self, rollout: Rollout, scores: Tensor, kl: Tensor, old: Evaluation, stats: dict[str, Tensor]
    ) -> None:
        """TRL's PPO health metrics (`env/*` are the reward function's raw scores)."""
        mask = rollout.response_mask
        metrics = {
            "env/reward_mean": scores.mean(),
            "env/reward_std": scores.std() if len(scores) > 1 else torch.zeros((), device=self.device),
            "objective/kl": kl,
            "objective/kl_coef": torch.tensor(float(self.kl_controller.value)),
            "objective/entropy": masked_mean(old.entropy, mask),
            "policy/clipfrac": stats["clipfrac"],
            "policy/approxkl": stats["approx_kl"],
            "train/loss": stats["loss"],
            "train/response_length": rollout.response_lengths.float().mean(),
            "train/ended_fraction": rollout.ended.float().mean(),
        }
        if "value_loss" in stats:
            metrics["critic/loss"] = stats["value_loss"]  # not `val/`: that prefix means validation in lightft
            metrics["critic/clipfrac"] = stats["value_clipfrac"]
        for name, value in metrics.items():
            self.log(name, value.float(), prog_bar=name in ("env/reward_mean", "objective/kl"), batch_size=len(scores))

    def rollout_records(self, n: int) -> list[dict[str, Any]]:
        """The first `n` responses of the latest rollout, `{prompt, completion, reference, reward}` (the raw score);
        what `lightft.callbacks.SampleGenerations` logs.
        """  # noqa: D205
        if self.latest_rollout is None:
            return []
        rollout, raw = self.latest_rollout
        rows = zip(rollout.prompts[:n], rollout.completions, rollout.references, raw[:n].tolist(), strict=False)
        return [{"prompt": p, "completion": c, "reference": r, "reward": s} for p, c, r, s in rows]

    def validation_step(self, batch: PromptBatch, batch_idx: int) -> None:
        """Mean reward of one response per validation prompt (the sampling settings of training)."""
        rollout = sample(self.model, self.tokenizer, batch, self.generation, 1)
        self.log("eval/reward_mean", self.scores(rollout)[0].mean(), prog_bar=True, batch_size=len(rollout.prompts))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Trainable weights (policy adapter, value head) and the KL controller's coefficient."""
        super().on_save_checkpoint(checkpoint)
        checkpoint["kl_controller"] = self.kl_controller.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the KL coefficient of an adaptive controller."""
        super().on_load_checkpoint(checkpoint)
        if "kl_controller" in checkpoint:
            self.kl_controller.load_state_dict(checkpoint["kl_controller"])


def _check_settings(peft: Any, generation: GenerationSettings, algorithm: str, samples_per_prompt: int) -> None:
    if isinstance(peft, FullFineTune):
        raise LightFTError(
            f"{KEY}.peft: PPOModule's reference is the policy with its adapter disabled; use a PEFT strategy "
            "(e.g. lightft.peft.LoRA), not FullFineTune."
        )
    if not generation.do_sample:
        raise LightFTError(f"{KEY}.generation.do_sample: on-policy RL needs sampled responses; set it true.")
    if algorithm == "grpo" and samples_per_prompt < 2:
        raise LightFTError(f"{KEY}.samples_per_prompt: GRPO compares samples of a prompt; set it to 2 or more.")
    if samples_per_prompt < 1:
        raise LightFTError(f"{KEY}.samples_per_prompt: must be >= 1.")


def _check_loss(ppo: PPOSettings, algorithm: str) -> None:
    key = f"{KEY}.ppo"
    if ppo.loss_type not in LOSS_TYPES:
        raise LightFTError(f"{key}.loss_type: unknown loss type {ppo.loss_type!r}; use one of {', '.join(LOSS_TYPES)}.")
    if algorithm == "ppo" and ppo.loss_type != "bnpo":
        raise LightFTError(
            f"{key}.loss_type: {ppo.loss_type} is a GRPO loss type; set algorithm: grpo, or drop loss_type for PPO."
        )
    if ppo.clip_range_high is not None and ppo.clip_range_high <= 0:
        raise LightFTError(f"{key}.clip_range_high: must be > 0 (or null for a symmetric clip).")
    if ppo.loss_type == "dapo" and ppo.upper_clip <= ppo.clip_range:
        raise LightFTError(
            f"{key}.clip_range_high: dapo clips higher, so it must be above clip_range ({ppo.clip_range}), "
            f"got {ppo.upper_clip}; set it, e.g. {DAPO_CLIP_RANGE_HIGH} with clip_range 0.2."
        )


def _select(rollout: Rollout, rows: Tensor) -> Rollout:
    """The rollout restricted to `rows` (a minibatch)."""
    index = rows.tolist()
    return Rollout(
        sequences=rollout.sequences[rows],
        attention_mask=rollout.attention_mask[rows],
        response_mask=rollout.response_mask[rows],
        prompt_length=rollout.prompt_length,
        ended=rollout.ended[rows],
        prompts=[rollout.prompts[i] for i in index],
        completions=[rollout.completions[i] for i in index],
        references=[rollout.references[i] for i in index],
    )
