"""Prompt-style methods through `peft`: trained virtual tokens instead of changed weights.

- PromptTuning (Lester et al. 2021): n trainable embeddings prepended to the input.
- PTuning (P-tuning, Liu et al. 2021): the virtual-token embeddings come from a small prompt encoder (MLP or LSTM).
- PrefixTuning (Li & Liang 2021): trainable key/value prefixes in every attention layer.

None of them can be merged into the weights. The virtual tokens shift positions, so packing (which restarts
positions per document) is refused, and prefix tuning's key/value cache does not survive activation
checkpointing, so that combination is refused too — both at config time.
"""

from __future__ import annotations

from typing import Literal

from peft import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, PromptTuningInit
from torch import nn

from lightft.errors import LightFTError
from lightft.peft.library import PeftLibraryStrategy

KEY = "model.init_args.peft.init_args"


def _check_tokens(num_virtual_tokens: int) -> None:
    if num_virtual_tokens < 1:
        raise LightFTError(f"{KEY}.num_virtual_tokens: must be >= 1, got {num_virtual_tokens}.")


class PromptTuning(PeftLibraryStrategy):
    """Trainable soft-prompt embeddings prepended to every input (peft `PromptTuningConfig`).

    Args:
        num_virtual_tokens: Length of the soft prompt.
        init: `sample_vocab` starts from embeddings of random vocabulary tokens, `random` from noise.
    """

    prompt_style = True
    mergeable = False

    def __init__(self, num_virtual_tokens: int = 20, init: Literal["sample_vocab", "random"] = "sample_vocab") -> None:
        _check_tokens(num_virtual_tokens)
        self.num_virtual_tokens, self.init = num_virtual_tokens, init

    def peft_config(self, model: nn.Module) -> PromptTuningConfig:
        """The equivalent `peft.PromptTuningConfig`."""
        init = PromptTuningInit.SAMPLE_VOCAB if self.init == "sample_vocab" else PromptTuningInit.RANDOM
        return PromptTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=self.num_virtual_tokens, prompt_tuning_init=init
        )


class PTuning(PeftLibraryStrategy):
    """P-tuning: virtual-token embeddings produced by a trainable prompt encoder (peft `PromptEncoderConfig`).

    Args:
        num_virtual_tokens: Number of virtual tokens.
        encoder: `mlp` or `lstm` reparameterisation of the virtual tokens.
        encoder_hidden_size: Hidden size of the prompt encoder.
        encoder_dropout: Dropout inside the prompt encoder.
    """

    prompt_style = True
    mergeable = False

    def __init__(
        self,
        num_virtual_tokens: int = 20,
        encoder: Literal["mlp", "lstm"] = "mlp",
        encoder_hidden_size: int = 128,
        encoder_dropout: float = 0.0,
    ) -> None:
        _check_tokens(num_virtual_tokens)
        self.num_virtual_tokens, self.encoder = num_virtual_tokens, encoder
        self.encoder_hidden_size, self.encoder_dropout = encoder_hidden_size, encoder_dropout

    def peft_config(self, model: nn.Module) -> PromptEncoderConfig:
        """The equivalent `peft.PromptEncoderConfig`."""
        return PromptEncoderConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=self.num_virtual_tokens,
            encoder_reparameterization_type=self.encoder.upper(),
            encoder_hidden_size=self.encoder_hidden_size,
            encoder_dropout=self.encoder_dropout,
        )


class PrefixTuning(PeftLibraryStrategy):
    """Trainable key/value prefixes for every attention layer (peft `PrefixTuningConfig`).

    Args:
        num_virtual_tokens: Length of the prefix.
        projection: Reparameterise the prefix through a 2-layer MLP while training (more stable, more memory).
        encoder_hidden_size: Hidden size of that MLP.
    """

    prompt_style = True
    mergeable = False
    supports_gradient_checkpointing = False

    def __init__(self, num_virtual_tokens: int = 20, projection: bool = False, encoder_hidden_size: int = 256) -> None:
        _check_tokens(num_virtual_tokens)
        self.num_virtual_tokens, self.projection, self.encoder_hidden_size = (
            num_virtual_tokens,
            projection,
            encoder_hidden_size,
        )

    def peft_config(self, model: nn.Module) -> PrefixTuningConfig:
        """The equivalent `peft.PrefixTuningConfig`."""
        return PrefixTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=self.num_virtual_tokens,
            prefix_projection=self.projection,
            encoder_hidden_size=self.encoder_hidden_size,
        )
