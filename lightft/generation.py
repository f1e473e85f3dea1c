"""Text generation shared by `SFTModule.predict_step` and `lightft generate`: sampling settings and decoding."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationConfig, PreTrainedTokenizerBase


@dataclass(frozen=True)
class GenerationSettings:
    """How to sample completions.

    Args:
        max_new_tokens: Longest completion in tokens.
        do_sample: Sample (True) or decode greedily (False).
        temperature: Softmax temperature when sampling.
        top_p: Nucleus sampling mass when sampling.
        top_k: Keep the k most likely tokens when sampling (0: all).
        repetition_penalty: >1 discourages repeating tokens.
    """

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0

    def config(self, tokenizer: PreTrainedTokenizerBase, base: GenerationConfig | None = None) -> GenerationConfig:
        """A transformers `GenerationConfig` that stops at the model's end-of-turn tokens."""
        eos = [tokenizer.eos_token_id]
        if base is not None and base.eos_token_id is not None:
            extra = base.eos_token_id if isinstance(base.eos_token_id, list) else [base.eos_token_id]
            eos += [e for e in extra if e not in eos]
        sampling = {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k} if self.do_sample else {}
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            do_sample=self.do_sample,
            repetition_penalty=self.repetition_penalty,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id,
            use_cache=True,
            **sampling,
        )


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    settings: GenerationSettings,
) -> list[str]:
    """Completions (special tokens stripped) for a left-padded batch of prompts."""
    config = settings.config(tokenizer, getattr(model, "generation_config", None))
    output = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
    return tokenizer.batch_decode(output[:, input_ids.shape[1] :], skip_special_tokens=True)
