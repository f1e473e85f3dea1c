"""Optional CUDA speed-ups: Liger's Triton kernels, and the attention implementation `auto` picks.

`kernels: liger` patches the loaded model instance with Liger's RMSNorm, RoPE and SwiGLU before the PEFT strategy
wraps it (LoRA's layers then sit inside Liger's MLP), and computes token log-probs with Liger's fused linear
cross-entropy (`reduction="none"`: per-token values; the upstream gradient of each token is folded in during
backward) when the output layer is a plain linear layer. `attn_implementation: auto` picks flash-attention-2 (packed
rows then run its variable-length kernels through position ids) when the package is installed and the weights are
16-bit on CUDA, else PyTorch's SDPA. On CPU everything stays pure PyTorch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightft.errors import LightFTError

KEY = "model.init_args.compute.kernels"
LIGER_PIN = "liger-kernel==0.8.5"


def resolve_attention(name: str | None, dtype: torch.dtype) -> str | None:
    """`auto` -> `flash_attention_2` (CUDA, 16-bit weights, flash-attn installed) or `sdpa`; other names as given."""
    if name != "auto":
        return name
    from transformers.utils import is_flash_attn_2_available

    if torch.cuda.is_available() and dtype in (torch.bfloat16, torch.float16) and is_flash_attn_2_available():
        return "flash_attention_2"
    return "sdpa"


def check_liger(model_type: str, accelerator: str) -> None:
    """Config-time check: Liger runs on CUDA, needs the package, and patches only the families it knows."""
    if accelerator != "gpu":
        raise LightFTError(f"{KEY}: liger's kernels are Triton kernels for CUDA GPUs and this run is on CPU; "
                           "set kernels: torch.")  # fmt: skip
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError:
        raise LightFTError(f"{KEY}: liger-kernel is not installed; pip install '{LIGER_PIN}' (or lightft[cuda]), "
                           "or set kernels: torch.") from None  # fmt: skip
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        raise LightFTError(f"{KEY}: Liger has no kernels for model type '{model_type}'; set kernels: torch.")


def apply_liger(model: Any) -> None:
    """Patch a loaded transformers model with Liger's RMSNorm, RoPE and SwiGLU kernels (the loss is lightft's)."""
    check_liger(model.config.model_type, "gpu" if torch.cuda.is_available() else "cpu")
    from liger_kernel.transformers.monkey_patch import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(
        model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False
    )


def liger_logprobs(states: Tensor, weight: Tensor, targets: Tensor, softcap: float | None) -> Tensor:
    """(N,) float32 log-probs of `targets` from (N, H) hidden states and the (V, H) output weight, fused by Liger."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    losses = liger_fused_linear_cross_entropy(states.contiguous(), weight, targets, reduction="none", softcap=softcap)
    return -losses.float()
