"""Rollouts: sampling completions of a `PromptBatch` (samples of one prompt consecutive, references alongside), and
where each response ends."""

from __future__ import annotations

import torch

from lightft.data.batches import PromptBatch
from lightft.data.collate import PromptCollator
from lightft.generation import GenerationSettings
from lightft.rl.rollout import response_extent, sample, strip_pad


def prompts(tokenizer) -> PromptBatch:
    texts = ["Order two lattes", "Hi"]
    items = [{"prompt_ids": tokenizer(t)["input_ids"], "reference": ref, "index": i}
             for i, (t, ref) in enumerate(zip(texts, ['{"qty": 2}', ""], strict=True))]  # fmt: skip
    return PromptCollator(tokenizer.pad_token_id)(items)


def test_sample_repeats_each_prompt_and_its_reference(tiny_model, tokenizer):
    batch = prompts(tokenizer)
    rollout = sample(tiny_model, tokenizer, batch, GenerationSettings(max_new_tokens=5), samples_per_prompt=3)
    width = batch.input_ids.shape[1]
    assert rollout.prompt_length == width and rollout.sequences.shape == (6, width + rollout.response_mask.shape[1])
    assert torch.equal(rollout.sequences[:, :width], batch.input_ids.repeat_interleave(3, dim=0))
    assert torch.equal(rollout.attention_mask[:, :width], batch.attention_mask.repeat_interleave(3, dim=0))
    assert rollout.references == ['{"qty": 2}'] * 3 + [""] * 3
    assert rollout.prompts[0] == rollout.prompts[2] != rollout.prompts[3]
    assert tokenizer.pad_token not in rollout.prompts[3]  # the short prompt's left padding is not in its text
    # greedy decoding: the samples of one prompt are the same; responses are padded after their end
    assert torch.equal(rollout.sequences[0], rollout.sequences[2])
    response = rollout.sequences[:, width:]
    assert (response[~rollout.response_mask] == tokenizer.pad_token_id).all()
    assert torch.equal(rollout.attention_mask[:, width:], rollout.response_mask.long())


def test_sample_gives_back_the_training_mode(tiny_model, tokenizer):
    tiny_model.train()
    sample(tiny_model, tokenizer, prompts(tokenizer), GenerationSettings(max_new_tokens=2))
    assert tiny_model.training


def test_a_response_ends_at_its_first_eos_inclusive():
    eos = 9
    response = torch.tensor([[4, 9, 5, 9], [4, 5, 6, 7], [9, 1, 1, 1]])
    mask, ended = response_extent(response, [eos, 10])
    assert mask.tolist() == [[True, True, False, False], [True] * 4, [True, False, False, False]]
    assert ended.tolist() == [True, False, True]


def test_strip_pad_removes_the_left_padding_text():
    assert strip_pad(["<pad><pad>Hi", "Hello"], "<pad>") == ["Hi", "Hello"]
    assert strip_pad(["x"], None) == ["x"]
