"""Proof, on the loaded model, that packed documents cannot attend to each other.

Packing relies on transformers turning position resets into a block-diagonal mask (sdpa/eager/flex) or varlen
kernels (flash-attention). Architectures or attention back-ends that ignore the resets would silently leak
context between documents, so the first packed batch runs this two-document probe.
"""

from __future__ import annotations

import torch
from torch import nn

from lightft.errors import LightFTError


@torch.no_grad()
def check_packed_attention(model: nn.Module, device: torch.device) -> None:
    """Raise unless a document packed after another gets exactly the logits it gets alone."""
    vocab = model.config.vocab_size
    ids = torch.tensor([[11, 12, 13, 14, 15, 16]], device=device) % vocab
    positions = torch.tensor([[0, 1, 2, 0, 1, 2]], device=device)
    was_training = model.training
    model.eval()
    try:
        packed = model(input_ids=ids, position_ids=positions, use_cache=False).logits[:, 3:].float()
        alone = model(input_ids=ids[:, 3:], use_cache=False).logits.float()
    finally:
        model.train(was_training)
    tolerance = 1e-3 if packed.dtype == torch.float32 and alone.dtype == torch.float32 else 5e-2
    if not torch.allclose(packed, alone, atol=tolerance * max(1.0, alone.abs().max().item()), rtol=0):
        attn = getattr(model.config, "_attn_implementation", "?")
        raise LightFTError(
            f"data.init_args.packing: with attn_implementation={attn}, {type(model).__name__} lets packed documents "
            "attend to each other; set packing: false, or model.init_args.model.attn_implementation: sdpa."
        )
