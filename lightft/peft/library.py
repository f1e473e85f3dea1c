"""What every strategy implemented by the `peft` library shares; a subclass only says which `PeftConfig`.

Disabling is peft's `disable_adapter()` (for prompt-style methods too: the virtual tokens are skipped), checkpoints
and exports are peft's adapter format (`adapter_config.json` + `adapter_model.safetensors`), merging is
`merge_and_unload()` where the method defines one.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

import torch
from peft import PeftConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from torch import Tensor, nn
from transformers import BitsAndBytesConfig, PreTrainedModel

from lightft.errors import LightFTError
from lightft.models.loading import GROWN_FROM


class PeftLibraryStrategy:
    """Base of the peft-backed strategies (LoRA family, IA3, prompt/prefix/P-tuning)."""

    prompt_style = False
    supports_gradient_checkpointing = True
    mergeable = True

    def peft_config(self, model: nn.Module) -> PeftConfig:
        """The peft config for `model` (targets resolved against its layers)."""
        raise NotImplementedError

    def quantization_config(self, compute_dtype: torch.dtype) -> BitsAndBytesConfig | None:
        """Load the base as is (quantizing strategies override this)."""
        return None

    def check(self, model: nn.Module) -> None:
        """Building the config resolves and checks the targets against `model`."""
        self.peft_config(model)

    def apply(self, model: PreTrainedModel) -> nn.Module:
        """Freeze the base and add the method's trainable parts."""
        config = self.peft_config(model)
        if "ForSequenceClassification" in type(model).__name__:
            config.task_type = "SEQ_CLS"  # peft then trains and saves the scalar head (`score`) in full
        try:
            return get_peft_model(model, config)
        except ValueError as err:
            raise LightFTError(f"model.init_args.peft: peft rejected the {type(self).__name__} config: {err}") from err

    def disabled(self, model: nn.Module) -> AbstractContextManager[None]:
        """Base-model forward: peft skips the adapter inside this context."""
        return model.disable_adapter()  # type: ignore[operator]

    def trainable_state_dict(self, model: nn.Module) -> dict[str, Tensor]:
        """Trained weights as peft saves them (`adapter_model.safetensors` keys)."""
        return get_peft_model_state_dict(model, save_embedding_layers=grown_embeddings(model))  # type: ignore[arg-type]

    def merge(self, model: nn.Module) -> PreTrainedModel:
        """Fold the adapter into the base weights and remove it."""
        if not self.mergeable:
            raise LightFTError(
                f"{type(self).__name__} cannot be merged into the base weights (it adds tokens or activations, not "
                "a weight update); export the adapter without --merge."
            )
        return model.merge_and_unload()  # type: ignore[operator]

    def save(self, model: nn.Module, directory: Path) -> None:
        """A peft adapter directory."""
        model.save_pretrained(directory, save_embedding_layers=grown_embeddings(model))  # type: ignore[operator]

    def load(self, model: PreTrainedModel, directory: Path) -> nn.Module:
        """Attach a saved adapter to a freshly loaded base."""
        return PeftModel.from_pretrained(model, directory)


def grown_embeddings(model: nn.Module) -> bool:
    """Whether the adapter must carry the embedding matrices: `load_model` grew them for a token the tokenizer added.

    lightft knows; peft's own guess (`save_embedding_layers="auto"`) compares the vocabulary with the base model's
    `config.json`, found by path, which a GGUF file, a `package://` directory or an offline Hub id does not give: it
    then warns "Could not find a config file" and leaves grown embeddings out. Embeddings that an adapter targets
    are saved as adapter weights either way.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, GROWN_FROM, None) is not None
