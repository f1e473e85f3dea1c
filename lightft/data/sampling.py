"""Batch planning: which examples form each optimizer step, on every rank, known before the step runs.

Every rank computes the same plan from the same seed: shuffle, group by length within windows of many steps, cut
into global steps of `batch_size x accumulate x world_size` items, then split each step into micro-batches,
`accumulate` per rank. Each micro-batch carries the number of trained tokens in its whole step, so the loss can be
normalised by it: 4 micro-batches of 1 give the same gradient as 1 batch of 4, and 2 ranks the same as 1 rank
with twice the batch. All ranks always get the same number of micro-batches (no collective hangs). Packing by step
(`pack_length`) packs each step's examples into rows after planning, so a packed run takes the unpacked run's
steps; a token budget (`unit="tokens"`) plans fixed micro-batches of at most `batch_size` tokens instead of items.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from torch.utils.data import DataLoader, Sampler

from lightft.data.collate import pack_lengths
from lightft.errors import LightFTError

GROUP_WINDOW_STEPS = 64  # length grouping sorts within windows of this many global steps
PlanUnit = Literal["items", "tokens"]


def token_groups(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices cut into groups of at most `budget` tokens, padding included (count x longest), longest first.

    Deterministic: items sorted by decreasing length (ties by index), each group filled while it stays in budget;
    an item longer than the budget is a group of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    groups: list[list[int]] = []
    for i in order:
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= budget:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def split_rows(rows: list[tuple[int, ...]], n: int) -> list[tuple[int, ...]]:
    """At least `n` rows (when they hold `n` documents): the row with the most documents is halved until then.

    Every micro-batch of a step needs a row of its own. Deterministic (ties: the earlier row).
    """
    heap = [(-len(row), k, row) for k, row in enumerate(rows)]
    heapq.heapify(heap)
    count = len(rows)
    while len(heap) < n and heap and heap[0][0] < -1:
        _, _, row = heapq.heappop(heap)
        for half in (row[: len(row) // 2], row[len(row) // 2 :]):
            heapq.heappush(heap, (-len(half), count, half))
            count += 1
    return [row for _, _, row in sorted(heap, key=lambda entry: entry[1])]


def balance(rows: list[tuple[int, ...]], tokens: Sequence[int], n_parts: int, cap: int) -> list[list[Any]]:
    """Rows dealt into `n_parts` micro-batches of at most `cap` rows, most tokens first to the lightest part.

    With at least `n_parts` rows every part gets one (rows are never empty). Deterministic (ties by index).
    """
    parts: list[list[Any]] = [[] for _ in range(n_parts)]
    heap = [(0, p) for p in range(n_parts)]
    for r in sorted(range(len(rows)), key=lambda r: (-tokens[r], r)):
        load, p = heapq.heappop(heap)
        parts[p].append(rows[r])
        if len(parts[p]) < cap:
            heapq.heappush(heap, (load + tokens[r], p))
    return parts


@dataclass(frozen=True)
class PlanSummary:
    """What an epoch's plan holds, for the log line printed at fit start and by `lightft doctor`.

    Per optimizer step (full steps; a partial last step aside): `examples` and trained tokens (`trained`); per
    micro-batch: `rows` and their `tokens` (no padding).
    """

    steps: int
    micro_batches: int
    examples: list[int]
    trained: list[int]
    rows: list[int]
    tokens: list[int]


class PlannedBatchSampler(Sampler[list[tuple[Any, int]]]):
    """Yields this rank's micro-batches as lists of `(key, normaliser)`: the step's summed `trained` values.

    A key is an item index, or with `pack_length` a tuple of item indices that form one packed row.

    Args:
        lengths: Tokens per item (for length grouping).
        trained: Trained tokens per item (for the step's normaliser).
        batch_size: Items per micro-batch (`unit="tokens"`: the most tokens per micro-batch, padding included).
        accumulate: Micro-batches per rank per optimizer step.
        world_size: Number of data-parallel ranks.
        rank: This rank.
        shuffle: Reshuffle every epoch (seeded by `seed` + epoch).
        group_by_length: Put items of similar length into the same step (less padding).
        seed: Base seed shared by all ranks.
        pack_length: Pack each planned step's items into rows of at most this many tokens (best-fit decreasing),
            dealt over the step's micro-batches (at most `batch_size` rows each); None: no packing here.
        unit: `items`, or `tokens`: fixed micro-batches of at most `batch_size` tokens (`token_groups`), planned
            `accumulate x world_size` per step.
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
        pack_length: int | None = None,
        unit: PlanUnit = "items",
    ) -> None:
        if unit == "tokens" and pack_length is not None:
            raise ValueError("a token budget plans fixed groups of items; pack them before (TokenDataset packs)")
        self.lengths, self.trained = np.asarray(lengths, dtype=np.int64), np.asarray(trained, dtype=np.int64)
        self.batch_size, self.accumulate, self.world_size, self.rank = batch_size, accumulate, world_size, rank
        self.shuffle, self.group_by_length, self.seed = shuffle, group_by_length, seed
        self.pack_length, self.unit = pack_length, unit
        self.epoch = 0
        self.start = 0  # micro-batches of this epoch already consumed (set when resuming mid-epoch)
        # what is planned: the items themselves, or (tokens) fixed groups of items, one per micro-batch
        self.groups = token_groups(self.lengths.tolist(), batch_size) if unit == "tokens" else None
        if self.groups is None:
            self.plan_lengths, self.plan_trained, self.per_micro = self.lengths, self.trained, batch_size
        else:
            self.plan_lengths = np.array([len(g) * self.lengths[g[0]] for g in self.groups], dtype=np.int64)
            self.plan_trained = np.array([self.trained[g].sum() for g in self.groups], dtype=np.int64)
            self.per_micro = 1

    @property
    def global_batch(self) -> int:
        """Items (or tokens) per optimizer step over all ranks (batch_size x accumulate x world_size)."""
        return self.batch_size * self.accumulate * self.world_size

    @property
    def step_units(self) -> int:
        """Planned units (items, or token groups) per full optimizer step."""
        return self.per_micro * self.accumulate * self.world_size

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def steps(self) -> list[np.ndarray]:
        """The epoch's global steps (indices of planned units), identical on every rank."""
        n, size = len(self.plan_lengths), self.step_units
        rng = np.random.default_rng(self.seed + self.epoch)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.group_by_length:
            window = size * GROUP_WINDOW_STEPS
            chunks = [order[i : i + window] for i in range(0, len(order), window)]
            order = np.concatenate([c[np.argsort(-self.plan_lengths[c], kind="stable")] for c in chunks] or [order])
        steps = [order[i : i + size] for i in range(0, len(order), size)]
        if steps and len(steps[-1]) < self.world_size:
            steps.pop()  # too few items to give every rank one
        # a partial step must stay last: Lightning steps the optimizer every `accumulate` micro-batches
        partial = [steps.pop()] if steps and len(steps[-1]) < size else []
        if self.shuffle and self.group_by_length and len(steps) > 1:
            # keep the longest step first (a memory problem shows at once), shuffle the rest
            longest = max(range(len(steps)), key=lambda s: self.plan_lengths[steps[s]].max())
            rest = [s for i, s in enumerate(steps) if i != longest]
            steps = [steps[longest]] + [rest[i] for i in rng.permutation(len(rest))]
        return steps + partial

    def _per_rank(self, units: int) -> int:
        """Micro-batches per rank for a step of `units` planned units (fewer only in a partial last step)."""
        return min(self.accumulate, math.ceil(units / (self.per_micro * self.world_size)), units // self.world_size)

    def parts(self, step: np.ndarray) -> list[list[Any]]:
        """All micro-batches of a step (keys), over every rank: micro-batch a of rank r is part a * world + r."""
        n_parts = self._per_rank(len(step)) * self.world_size
        if self.pack_length is not None:
            return self._packed_parts(step, n_parts)
        split = [part.tolist() for part in np.array_split(step, n_parts)]
        if self.groups is None:
            return split
        return [[i for g in part for i in self.groups[g]] for part in split]

    def _packed_parts(self, step: np.ndarray, n_parts: int) -> list[list[Any]]:
        """The step's items packed into rows and dealt over `n_parts` micro-batches of at most batch_size rows."""
        packs = pack_lengths(self.lengths[step].tolist(), int(self.pack_length or 0))
        rows = split_rows([tuple(int(step[j]) for j in pack) for pack in packs], n_parts)
        tokens = [int(self.lengths[list(row)].sum()) for row in rows]
        return balance(rows, tokens, n_parts, cap=max(self.batch_size, -(-len(rows) // n_parts)))

    def _micro_batches(self, step: np.ndarray) -> list[list[Any]]:
        parts = self.parts(step)
        return [parts[a * self.world_size + self.rank] for a in range(len(parts) // self.world_size)]

    def __iter__(self) -> Iterator[list[tuple[Any, int]]]:
        skip, self.start = self.start, 0
        served = 0
        for step in self.steps():
            normaliser = int(self.plan_trained[step].sum())
            for micro in self._micro_batches(step):
                served += 1
                if served > skip:
                    yield [(key, normaliser) for key in micro]

    def __len__(self) -> int:
        full, rest = divmod(len(self.plan_lengths), self.step_units)
        return full * self.accumulate + (self._per_rank(rest) if rest >= self.world_size else 0)

    def _tokens(self, key: Any) -> int:
        return int(self.lengths[list(key)].sum()) if isinstance(key, tuple) else int(self.lengths[key])

    def summary(self, docs: Sequence[int] | None = None) -> PlanSummary:
        """The epoch's plan in figures; `docs`: examples per item (packed rows), 1 each by default."""
        steps = self.steps()
        full = [s for s in steps if len(s) == self.step_units] or steps
        examples, trained, rows, tokens = [], [], [], []
        for step in full:
            parts = self.parts(step)
            keys = [key for part in parts for key in part]
            examples.append(sum(len(k) if isinstance(k, tuple) else docs[k] if docs else 1 for k in keys))
            trained.append(int(self.plan_trained[step].sum()))
            rows += [len(part) for part in parts]
            tokens += [sum(self._tokens(key) for key in part) for part in parts]
        return PlanSummary(len(steps), len(self), examples, trained, rows, tokens)


def count_steps(items: int, global_batch: int, world_size: int) -> int:
    """Optimizer steps per epoch of `items` planned `global_batch` at a time (a last step too small is dropped)."""
    full, rest = divmod(items, global_batch)
    return full + int(rest >= world_size)


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

    def state_dict(self) -> dict[str, Any]:
        """Epoch, micro-batches handed to the training loop so far, and the step shape they were cut with."""
        sampler = self.batch_sampler
        return {
            "epoch": sampler.epoch,
            "served": self._served,
            "world_size": sampler.world_size,
            "accumulate": sampler.accumulate,
            "global_batch": sampler.global_batch,
            "unit": sampler.unit,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
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
            if sampler.unit == "tokens" or state.get("unit", "items") == "tokens":
                raise LightFTError(
                    "--ckpt_path: a run with batch_size_unit: tokens plans fixed micro-batches of batch_size tokens; "
                    f"resume it on {state['world_size']} process(es) with accumulate_grad_batches "
                    f"{state['accumulate']}, or use batch_size_unit: examples to change the number of processes."
                )
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
