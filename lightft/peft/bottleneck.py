"""BottleneckAdapter: lightft's own strategy, and the worked example of writing one (docs/extending.md).

A small bottleneck network beside the attention and/or MLP block of every decoder layer:

    y = f(x) + up(act(down(x)))          f = the frozen block, down: d -> b, up: b -> d, b << d

(the parallel adapter of He et al. 2022, "Towards a Unified View of Parameter-Efficient Transfer Learning";
Houlsby et al. 2019 place the same bottleneck after the block). `up` starts at zero, so training starts from the
base model exactly. It adds a non-linear branch, so it cannot be merged into the weights; it is saved in its own
small format: `bottleneck_config.json` + `bottleneck_adapter.safetensors`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import BitsAndBytesConfig, PreTrainedModel

from lightft.errors import LightFTError

KEY = "model.init_args.peft.init_args"
CONFIG_FILE, WEIGHTS_FILE = "bottleneck_config.json", "bottleneck_adapter.safetensors"
# child names of the attention and MLP blocks inside a decoder layer, across architectures
BLOCK_NAMES = {"attention": ("self_attn", "attn", "attention"), "mlp": ("mlp", "feed_forward")}
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


class Bottleneck(nn.Module):
    """up(act(down(x))) with `up` initialised to zero."""

    def __init__(self, hidden: int, size: int, activation: str, dropout: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, size, dtype=dtype)
        self.up = nn.Linear(size, hidden, dtype=dtype)
        self.act, self.dropout = ACTIVATIONS[activation](), nn.Dropout(dropout)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        """The adapter's contribution for block input `x` (B, T, d)."""
        return self.up(self.dropout(self.act(self.down(x))))


class AdaptedBlock(nn.Module):
    """A frozen block plus a parallel bottleneck: y = block(x) + adapter(x). Tuple outputs keep their extras."""

    def __init__(self, block: nn.Module, adapter: Bottleneck) -> None:
        super().__init__()
        self.block, self.adapter, self.active = block, adapter, True

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the block; add the adapter's output to its (first) output."""
        output = self.block(*args, **kwargs)
        if not self.active:
            return output
        x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        if isinstance(output, tuple):
            return (output[0] + self.adapter(x), *output[1:])
        return output + self.adapter(x)


@contextmanager
def _bypassed(blocks: list[AdaptedBlock]) -> Iterator[None]:
    for block in blocks:
        block.active = False
    try:
        yield
    finally:
        for block in blocks:
            block.active = True


class BottleneckAdapter:
    """Bottleneck adapters beside the attention and/or MLP block of every decoder layer.

    Args:
        size: Bottleneck width b (trainable parameters per adapted block: 2 * d * b + d + b).
        activation: Non-linearity between the down and up projections.
        placement: Which blocks get an adapter: `attention`, `mlp`, or `both`.
        dropout: Dropout on the bottleneck activations.
    """

    prompt_style = False
    supports_gradient_checkpointing = True
    mergeable = False

    def __init__(
        self,
        size: int = 64,
        activation: Literal["relu", "gelu", "silu", "tanh"] = "relu",
        placement: Literal["attention", "mlp", "both"] = "both",
        dropout: float = 0.0,
    ) -> None:
        if size < 1:
            raise LightFTError(f"{KEY}.size: the bottleneck needs at least 1 unit, got {size}.")
        self.size, self.activation, self.placement, self.dropout = size, activation, placement, dropout

    def quantization_config(self, compute_dtype: torch.dtype) -> BitsAndBytesConfig | None:
        """The base is loaded as is."""
        return None

    def blocks(self, model: nn.Module) -> list[tuple[nn.Module, str]]:
        """(decoder layer, child name) of every block to adapt.

        Decoder layers are recognised as modules with both an attention child and an MLP child.
        """
        kinds = ["attention", "mlp"] if self.placement == "both" else [self.placement]
        found = []
        for layer in model.modules():
            children = dict(layer.named_children())
            if not all(any(n in children for n in BLOCK_NAMES[k]) for k in ("attention", "mlp")):
                continue
            found += [(layer, n) for kind in kinds for n in BLOCK_NAMES[kind] if n in children]
        return found

    def check(self, model: nn.Module) -> None:
        """The model must have decoder layers with the blocks named in `placement`."""
        if not self.blocks(model):
            raise LightFTError(
                f"{KEY}.placement: {type(model).__name__} has no decoder layer with attention "
                f"({'/'.join(BLOCK_NAMES['attention'])}) and MLP ({'/'.join(BLOCK_NAMES['mlp'])}) blocks to adapt; "
                "use a LoRA-family strategy for this architecture."
            )

    def apply(self, model: PreTrainedModel) -> nn.Module:
        """Freeze the model and wrap each chosen block in an `AdaptedBlock` with a fresh bottleneck."""
        self.check(model)
        model.requires_grad_(False)
        hidden, dtype = model.config.hidden_size, model.dtype
        for layer, name in self.blocks(model):
            adapter = Bottleneck(hidden, self.size, self.activation, self.dropout, dtype)
            setattr(layer, name, AdaptedBlock(getattr(layer, name), adapter.to(model.device)))
        return model

    def disabled(self, model: nn.Module) -> AbstractContextManager[None]:
        """Base-model forward: every adapter is bypassed inside this context."""
        return _bypassed([m for m in model.modules() if isinstance(m, AdaptedBlock)])

    def trainable_state_dict(self, model: nn.Module) -> dict[str, Tensor]:
        """The adapters' weights, keyed by their place in the model."""
        return {name: p.detach() for name, p in model.named_parameters() if ".adapter." in name}

    def merge(self, model: nn.Module) -> PreTrainedModel:
        """Not defined: the bottleneck is non-linear."""
        raise LightFTError(
            "BottleneckAdapter adds a non-linear branch and cannot be merged into the base weights; export the "
            "adapter without --merge and load it with lightft."
        )

    def save(self, model: nn.Module, directory: Path) -> None:
        """`bottleneck_config.json` (the arguments) + `bottleneck_adapter.safetensors` (the weights)."""
        config = {"size": self.size, "activation": self.activation, "placement": self.placement,
                  "dropout": self.dropout}  # fmt: skip
        (Path(directory) / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        weights = {k: v.contiguous() for k, v in self.trainable_state_dict(model).items()}
        save_file(weights, Path(directory) / WEIGHTS_FILE)

    def load(self, model: PreTrainedModel, directory: Path) -> nn.Module:
        """Wrap a fresh base as `save`'s config says and load the adapter weights (every one must fit)."""
        config = json.loads((Path(directory) / CONFIG_FILE).read_text())
        adapted = BottleneckAdapter(**config).apply(model)
        missing, unexpected = adapted.load_state_dict(load_file(Path(directory) / WEIGHTS_FILE), strict=False)
        missing = [k for k in missing if ".adapter." in k]
        if missing or unexpected:
            raise LightFTError(f"{directory}: adapter weights do not fit this model (missing {missing[:2]}, "
                               f"unexpected {unexpected[:2]}); load it over the base it was trained on.")  # fmt: skip
        return adapted
