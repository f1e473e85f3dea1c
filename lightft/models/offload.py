"""Activation offloading: the tensors autograd saves for backward wait in pinned CPU memory instead of on the GPU.

With gradient checkpointing, the only tensors saved inside the decoder are each layer's input (non-reentrant
checkpointing saves them through `save_for_backward`, which these hooks see), so offloading leaves one layer's
activations on the GPU at a time. Written here rather than taking `torch.autograd.graph.save_on_cpu` because that
one also copies parameters (frozen weights saved by matmuls) and every small tensor to the host and back each step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

MIN_BYTES = 1 << 20  # tensors under 1 MiB stay where they are (their copies would cost more than they free)


class OffloadActivations(torch.autograd.graph.saved_tensors_hooks):
    """Saved CUDA tensors of at least `min_bytes` (not parameters) go to pinned host memory until backward."""

    def __init__(self, min_bytes: int = MIN_BYTES) -> None:
        self.min_bytes = min_bytes
        self.offloaded = 0  # bytes sent to the host since entering (for tests and logs)
        super().__init__(self.pack, self.unpack)

    def pack(self, tensor: Tensor) -> Any:
        """Copy a large saved activation to pinned host memory; keep everything else."""
        size = tensor.numel() * tensor.element_size()
        if tensor.device.type != "cuda" or isinstance(tensor, nn.Parameter) or size < self.min_bytes:
            return tensor
        host = torch.empty(tensor.size(), dtype=tensor.dtype, layout=tensor.layout, pin_memory=True)
        host.copy_(tensor, non_blocking=True)  # ordered before any later use of the freed block on this stream
        self.offloaded += size
        return tensor.device, host

    @staticmethod
    def unpack(packed: Any) -> Tensor:
        """Bring an offloaded activation back to its device (kept ones pass through)."""
        if isinstance(packed, tuple):
            device, host = packed
            return host.to(device, non_blocking=True)
        return packed
