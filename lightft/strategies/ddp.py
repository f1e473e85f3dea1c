"""`DDP`: one full replica per rank, gradients all-reduced."""

from __future__ import annotations

from lightning.pytorch.strategies import DDPStrategy

from lightft.strategies.common import timeout


class DDP(DDPStrategy):
    """Distributed data parallel: a full replica per rank, gradients all-reduced in buckets.

    Args:
        find_unused_parameters: Search the graph for parameters without gradient each step; only needed when some
            trainable parameters are skipped in a step (slower).
        static_graph: Tell DDP the set of used parameters never changes (faster with activation checkpointing).
        gradient_as_bucket_view: Gradients are views into the all-reduce buckets (saves one gradient copy).
        process_group_backend: `nccl` (GPU), `gloo` (CPU); default picks by accelerator.
        timeout_minutes: How long a collective may wait before the job fails.
    """

    def __init__(
        self,
        find_unused_parameters: bool = False,
        static_graph: bool = False,
        gradient_as_bucket_view: bool = True,
        process_group_backend: str | None = None,
        timeout_minutes: float = 30.0,
    ) -> None:
        super().__init__(
            find_unused_parameters=find_unused_parameters,
            static_graph=static_graph,
            gradient_as_bucket_view=gradient_as_bucket_view,
            process_group_backend=process_group_backend,
            timeout=timeout(timeout_minutes),
        )
