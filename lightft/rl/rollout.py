"""Rollouts: sample completions of a prompt batch, find where each response ends, decode it for the reward.

Prompts arrive left-padded; `generate` appends responses, right-padded after their end-of-turn token. A response
is its tokens up to and including the first EOS (or all `max_new_tokens` when it never ends: `ended` is False).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from lightft.data.batches import PromptBatch
from lightft.generation import GenerationSettings
from lightft.strategies import gathered_for_generation


@dataclass(frozen=True)
class Rollout:
    """One batch of sampled responses (N = prompts x samples per prompt)."""

    sequences: Tensor  # (N, P + R) prompt (left-padded) + response
    attention_mask: Tensor  # (N, P + R)
    response_mask: Tensor  # (N, R) bool: response tokens, EOS included
    prompt_length: int  # P
    ended: Tensor  # (N,) bool: the response emitted EOS
    prompts: list[str]
    completions: list[str]
    references: list[str]

    @property
    def response_lengths(self) -> Tensor:
        """(N,) tokens per response."""
        return self.response_mask.sum(-1)

    def position_ids(self) -> Tensor:
        """(N, P + R) positions that skip left padding, as `generate` used them."""
        return (self.attention_mask.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def sample(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    batch: PromptBatch,
    settings: GenerationSettings,
    samples_per_prompt: int = 1,
) -> Rollout:
    """Generate `samples_per_prompt` responses per prompt of `batch` (rows of one prompt are consecutive)."""
    input_ids = batch.input_ids.repeat_interleave(samples_per_prompt, dim=0)
    prompt_mask = batch.attention_mask.repeat_interleave(samples_per_prompt, dim=0)
    config = settings.config(tokenizer, getattr(model, "generation_config", None))
    was_training = model.training
    model.eval()  # generation with the KV cache (training mode turns it off under gradient checkpointing)
    try:
        with gathered_for_generation(model):  # FSDP2: gather the weights once, not once per decoding step
            output = model.generate(input_ids=input_ids, attention_mask=prompt_mask, generation_config=config)
    finally:
        model.train(was_training)
    prompt_length = input_ids.shape[1]
    response = output[:, prompt_length:]
    response_mask, ended = response_extent(response, config.eos_token_id)
    response = response.masked_fill(~response_mask, tokenizer.pad_token_id)
    sequences = torch.cat([input_ids, response], dim=1)
    references = [r for r in batch.references for _ in range(samples_per_prompt)]
    return Rollout(
        sequences=sequences,
        attention_mask=torch.cat([prompt_mask, response_mask.long()], dim=1),
        response_mask=response_mask,
        prompt_length=prompt_length,
        ended=ended,
        prompts=strip_pad(tokenizer.batch_decode(input_ids, skip_special_tokens=False), tokenizer.pad_token),
        completions=tokenizer.batch_decode(response, skip_special_tokens=True),
        references=references,
    )


def response_extent(response: Tensor, eos_ids: int | list[int]) -> tuple[Tensor, Tensor]:
    """(mask (N, R) of tokens up to and including the first EOS, ended (N,))."""
    eos = torch.tensor(eos_ids if isinstance(eos_ids, list) else [eos_ids], device=response.device)
    is_eos = torch.isin(response, eos)  # (N, R)
    ended = is_eos.any(-1)
    first = torch.where(ended, is_eos.int().argmax(-1), torch.full_like(ended, response.shape[1] - 1, dtype=torch.long))
    mask = torch.arange(response.shape[1], device=response.device)[None, :] <= first[:, None]
    return mask, ended


def strip_pad(texts: list[str], pad_token: str | None) -> list[str]:
    """Prompt texts without the left padding `batch_decode` kept."""
    return [t.replace(pad_token, "") if pad_token else t for t in texts]
