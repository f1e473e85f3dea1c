"""Batch planning: which examples form each optimizer step, on every rank, known before the step runs.

Every rank computes the same plan from the same seed: shuffle, group by length within windows of many steps, cut
into global steps of `batch_size x accumulate x world_size` items, then split each step into micro-batches,
`accumulate` per rank. Each micro-batch carries the number of trained tokens in its whole step, so the loss can be
normalised by it: 4 micro-batches of 1 give the same gradient as 1 batch of 4, and 2 ranks the same as 1 rank
with twice the batch. All ranks always get the same number of micro-batches (no collective hangs).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Sampler

from lightft.errors import LightFTError

GROUP_WINDOW_STEPS = 64  # length grouping sorts within windows of this many global steps


class PlannedBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields this rank's micro-batches as lists of `(index, step_tokens)`.

    Args:
        lengths: Tokens per item (for length grouping).
        trained: Trained tokens per item (for the step's normaliser).
        batch_size: Items per micro-batch.
        accumulate: Micro-batches per rank per optimizer step.
        world_size: Number of data-parallel ranks.
        rank: This rank.
        shuffle: Reshuffle every epoch (seeded by `seed` + epoch).
        group_by_length: Put items of similar length into the same step (less padding).
        seed: Base seed shared by all ranks.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        trained: Sequence[int],
        batch_size: int,
        accumulate: int = 1,
        world_size: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        group_by_length: bool = True,
        seed: int = 0,
    ) -> None:
        self.lengths, self.trained = np.asarray(lengths), np.asarray(trained)
        self.batch_size, self.accumulate, self.world_size, self.rank = batch_size, accumulate, world_size, rank
        self.shuffle, self.group_by_length, self.seed = shuffle, group_by_length, seed
        self.epoch = 0
        self.start = 0  # micro-batches of this epoch already consumed (set when resuming mid-epoch)

    @property
    def global_batch(self) -> int:
        """Items per optimizer step over all ranks (batch_size x accumulate x world_size)."""
        return self.batch_size * self.accumulate * self.world_size

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def steps(self) -> list[np.ndarray]:
        """The epoch's global steps (item indices), identical on every rank."""
        rng = np.random.default_rng(self.seed + self.epoch)
        order = rng.permutation(len(self.lengths)) if self.shuffle else np.arange(len(self.lengths))
        if self.group_by_length:
            window = self.global_batch * GROUP_WINDOW_STEPS
            chunks = [order[i : i + window] for i in range(0, len(order), window)]
            order = np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")] for c in chunks] or [order])
        steps = [order[i : i + self.global_batch] for i in range(0, len(order), self.global_batch)]
        if steps and len(steps[-1]) < self.world_size:
            steps.pop()  # too few items to give every rank one
        # a partial step must stay last: Lightning steps the optimizer every `accumulate` micro-batches
        partial = [steps.pop()] if steps and len(steps[-1]) < self.global_batch else []
        if self.shuffle and self.group_by_length and len(steps) > 1:
            # keep the longest step first (a memory problem shows at once), shuffle the rest
            longest = max(range(len(steps)), key=lambda s: self.lengths[steps[s]].max())
            rest = [s for i, s in enumerate(steps) if i != longest]
            steps = [steps[longest]] + [rest[i] for i in rng.permutation(len(rest))]
        return steps + partial

    def _micro_batches(self, step: np.ndarray) -> list[np.ndarray]:
        per_rank = min(self.accumulate, math.ceil(len(step) / (self.batch_size * self.world_size)))
        parts = np.array_split(step, per_rank * self.world_size)
        # micro-batch a of rank r is part a * world + r: every rank sees the same share of every step
        return [parts[a * self.world_size + self.rank] for a in range(per_rank)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        skip, self.start = self.start, 0
        served = 0
        for step in self.steps():
            step_tokens = int(self.trained[step].sum())
            for micro in self._micro_batches(step):
                served += 1
                if served > skip:
                    yield [(int(i), step_tokens) for i in micro]

    def __len__(self) -> int:
        n = len(self.lengths)
        full, rest = divmod(n, self.global_batch)
        last = (
            min(self.accumulate, math.ceil(rest / (self.batch_size * self.world_size)))
            if rest >= self.world_size
            else 0
        )
        return full * self.accumulate + last


class ResumableDataLoader(DataLoader):
    """A DataLoader over a `PlannedBatchSampler` whose place in the epoch is saved in checkpoints.

    Lightning stores `state_dict()` of loaders that have one and calls `load_state_dict` when resuming; the planned
    epoch is then replayed from the first micro-batch not yet trained on, so a resumed run sees the same batches as
    an uninterrupted one.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._served = 0

    def __iter__(self) -> Iterator[Any]:
        self._served = self.batch_sampler.start
        for batch in super().__iter__():
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Epoch, micro-batches handed to the training loop so far, and the step shape they were cut with."""
        sampler = self.batch_sampler
        return {
            "epoch": sampler.epoch,
            "served": self._served,
            "world_size": sampler.world_size,
            "accumulate": sampler.accumulate,
            "global_batch": sampler.global_batch,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume the epoch after the micro-batches already trained on.

        On another number of processes (or accumulation) the position is carried over in optimizer steps, which
        needs the same global batch (`batch_size x accumulate_grad_batches x devices x num_nodes`) and a checkpoint
        written at a step boundary (every lightft checkpoint but Lightning's own mid-step SLURM one).
        """
        sampler = self.batch_sampler
        served = state["served"]
        self.restored_from: tuple[int, int] | None = None
        same_shape = (state.get("world_size", sampler.world_size), state.get("accumulate", sampler.accumulate))
        if same_shape != (sampler.world_size, sampler.accumulate):
            if state["global_batch"] != sampler.global_batch:
                raise LightFTError(
                    f"--ckpt_path: the checkpoint's global batch is {state['global_batch']} items "
                    f"({state['world_size']} process(es) x {state['accumulate']} accumulated micro-batches), this "
                    f"run's is {sampler.global_batch}: keep batch_size x trainer.accumulate_grad_batches x devices x "
                    "num_nodes equal to resume on another number of processes (e.g. double accumulate_grad_batches "
                    "when halving devices)."
                )
            steps, rest = divmod(served, state["accumulate"])
            if rest:
                raise LightFTError(
                    "--ckpt_path: this checkpoint was written in the middle of an optimizer step; resume it on "
                    f"{state['world_size']} process(es) with accumulate_grad_batches {state['accumulate']}."
                )
            self.restored_from = (served, steps * sampler.accumulate)
            served = steps * sampler.accumulate
        sampler.start = served % max(1, len(sampler))
