"""The training forward: next-token log-probs of a batch's trained positions, without (tokens x vocabulary) logits.

`token_logps` runs the model's own forward (PEFT wrappers, prompt tokens, sharding hooks all included) asking for
logits at no position (`logits_to_keep` = an empty index), takes the decoder's last hidden state from a forward hook,
and applies the output layer (`OutputHead`: any adapter on it, the architecture's logit scaling and soft-capping) to
the trained positions a chunk at a time (`lightft.losses.logprobs.head_logprobs`). `ComputeSettings.chunked_loss:
false` goes through the model's full logits instead. `check_output_head` proves once, on the loaded model, that the
head reproduces the model's own logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightft.losses.logprobs import TokenLogps, head_logprobs, logits_logprobs, scatter, trained_positions
from lightft.models.kernels import liger_logprobs


@dataclass(frozen=True)
class ComputeSettings:
    """How the forward and the loss run: speed and memory only, the same gradients either way.

    Args:
        chunked_loss: Apply the LM head and log-softmax to the trained positions only (prompt and padding never reach
            it), a chunk of positions at a time, each chunk recomputed in backward: the (tokens x vocabulary) logits
            never exist. False: the model's own full logits.
        loss_chunk_size: Positions per chunk; 0 picks it from the vocabulary (a chunk's logits hold ~16M values).
        kernels: `torch` (pure PyTorch, any device) or `liger` (CUDA only: Liger's fused RMSNorm, RoPE, SwiGLU and, for
            SFT, fused linear cross-entropy; Llama, Mistral, Qwen2/3, Gemma, Phi3 and the other families Liger patches).
        activation_offloading: Keep the tensors saved for backward (with gradient checkpointing: each decoder layer's
            input) in pinned CPU memory until backward needs them (CUDA; nothing moves on CPU).
    """

    chunked_loss: bool = True
    loss_chunk_size: int = 0
    kernels: Literal["torch", "liger"] = "torch"
    activation_offloading: bool = False


@dataclass(frozen=True)
class LMOutput:
    """Log-probs of a forward, and (when asked) the final hidden states (B, T, H) of the input's positions."""

    logps: TokenLogps
    hidden: Tensor | None = None


def unwrapped(model: nn.Module) -> Any:
    """The transformers model inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class OutputHead:
    """The model's output layer as its forward applies it: (n, H) hidden states -> (n, V) logits.

    Calls the output module itself (so an adapter on `lm_head` and sharding hooks act), then the architecture's
    post-processing: Cohere's `logit_scale`, Gemma's `final_logit_softcapping`.
    """

    def __init__(self, model: nn.Module) -> None:
        base = unwrapped(model)
        self.layer = base.get_output_embeddings()
        weight = self.layer.weight
        self.vocab_size = int(getattr(weight, "ds_shape", weight.shape)[0])  # ZeRO-3 partitions hold no shape
        self.scale = getattr(base, "logit_scale", None)
        self.softcap = getattr(base.config, "final_logit_softcapping", None)
        # Liger's fused loss takes the weight itself: a plain, bias-free layer not partitioned by ZeRO-3
        plain = type(self.layer) is nn.Linear and self.layer.bias is None and not hasattr(weight, "ds_shape")
        self.fusable = plain and self.scale is None

    def __call__(self, hidden: Tensor) -> Tensor:
        """(n, H) -> (n, V) logits."""
        logits = self.layer(hidden)
        if self.scale is not None:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def input_positions(values: Tensor, input_ids: Tensor) -> Tensor:
    """The input's own positions of per-position model outputs (B, T', ...) -> (B, T, ...): prompt-style PEFT
    prepends virtual tokens, so only the last T positions are the input's.
    """  # noqa: D205
    return values[:, -input_ids.shape[1] :]


def hidden_states(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None
) -> Tensor:
    """(B, T, H) final hidden states of the input's positions, from the model's forward with no logits computed."""
    captured: list[Tensor] = []

    def keep(module: nn.Module, args: Any, output: Any) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output.last_hidden_state)

    handle = unwrapped(model).get_decoder().register_forward_hook(keep)
    try:
        model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
            logits_to_keep=torch.empty(0, dtype=torch.long, device=input_ids.device),
        )
    finally:
        handle.remove()
    return input_positions(captured[-1], input_ids)


def token_logps(
    model: nn.Module,
    input_ids: Tensor,
    labels: Tensor,
    attention_mask: Tensor | None = None,
    position_ids: Tensor | None = None,
    settings: ComputeSettings = ComputeSettings(),
    entropy: bool = False,
    keep_hidden: bool = False,
) -> LMOutput:
    """Next-token log-probs (and entropy) of the batch's trained positions (labels != IGNORE_INDEX) under `model`.

    Args:
        model: A causal LM (peft-wrapped or not).
        input_ids: (B, T) token ids.
        labels: (B, T) token ids, IGNORE_INDEX where no log-prob is wanted.
        attention_mask: (B, T) or None (packed rows carry `position_ids` instead).
        position_ids: (B, T) or None.
        settings: Chunked or full logits, chunk size.
        entropy: Also the entropy of each trained position's next-token distribution.
        keep_hidden: Also return the final hidden states (e.g. for a value head).
    """
    if settings.chunked_loss:
        hidden = hidden_states(model, input_ids, attention_mask, position_ids)
        head = OutputHead(model)
        if settings.kernels == "liger" and head.fusable and not entropy:
            states, targets, mask = trained_positions(hidden, labels)
            logps = TokenLogps(scatter(liger_logprobs(states, head.layer.weight, targets, head.softcap), mask), mask)
        else:
            logps = head_logprobs(hidden, head, labels, settings.loss_chunk_size, entropy)
        return LMOutput(logps, hidden if keep_hidden else None)
    output = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        output_hidden_states=keep_hidden,
        use_cache=False,
    )
    hidden = input_positions(output.hidden_states[-1], input_ids) if keep_hidden else None
    return LMOutput(logits_logprobs(input_positions(output.logits, input_ids), labels, entropy), hidden)


@torch.no_grad()
def check_output_head(model: nn.Module, device: torch.device) -> bool:
    """Whether the output head applied to the hidden states reproduces the model's own logits (a 6-token probe)."""
    ids = torch.arange(11, 17, device=device).unsqueeze(0) % unwrapped(model).config.get_text_config().vocab_size
    was_training = model.training
    model.eval()
    try:
        expected = input_positions(model(input_ids=ids, use_cache=False).logits, ids)
        got = OutputHead(model)(hidden_states(model, ids))
    finally:
        model.train(was_training)
    tolerance = 1e-4 if expected.dtype == torch.float32 else 2e-2
    scale = max(1.0, expected.abs().max().item())
    return got.shape == expected.shape and torch.allclose(got.float(), expected.float(), atol=tolerance * scale, rtol=0)
