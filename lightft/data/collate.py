"""Dataset items -> typed batches (`lightft.data.batches`): padding, and packing that keeps documents apart.

`Collator` pads token rows (`TokenBatch`), `PairCollator` stacks chosen and rejected rows (`PairBatch`),
`UnpairedCollator` adds KTO's mismatched rows (`UnpairedBatch`), `PromptCollator` left-pads prompts (`PromptBatch`).
The step's `normaliser` that the planner put into every item of a micro-batch becomes the batch's.

Packing concatenates documents into rows of at most `max_length` tokens (best-fit decreasing) and restarts
`position_ids` per document with no 2-D attention mask; transformers then builds a block-diagonal causal mask from
the position resets (sdpa/eager/flex) or uses variable-length kernels (flash-attention), so a packed document sees
exactly what it would see alone. Padding in a packed row is one more "document" that carries no loss.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

import torch

from lightft.data.batches import PairBatch, PromptBatch, TokenBatch, UnpairedBatch
from lightft.data.templates import IGNORE_INDEX


def pack_lengths(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Best-fit-decreasing bin packing of example indices into bins of at most `max_length` tokens.

    Deterministic (ties broken by index). Each example must already fit (`lengths[i] <= max_length`).
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (remaining capacity, bin id), sorted
    for i in order:
        k = bisect.bisect_left(free, (lengths[i], -1))  # the fullest bin that still fits
        if k == len(free):
            bins.append([i])
            bisect.insort(free, (max_length - lengths[i], len(bins) - 1))
            continue
        remaining, b = free.pop(k)
        bins[b].append(i)
        bisect.insort(free, (remaining - lengths[i], b))
    return bins


class Collator:
    """Right-pads a list of items (`input_ids`, `labels`; optionally `position_ids`, `rows`, `normaliser`) into a batch.

    Unpacked items get an `attention_mask`; packed items (with `position_ids`) get `position_ids` and no mask (see
    module docstring), and the batch counts its real tokens in `n_tokens`.

    Args:
        pad_id: Token id used for padding (never EOS after `fix_pad_token`).
        pad_to_multiple_of: Round the padded length up (tensor-core friendly shapes on GPU).
    """

    def __init__(self, pad_id: int, pad_to_multiple_of: int = 1) -> None:
        self.pad_id, self.multiple = pad_id, max(1, pad_to_multiple_of)

    def __call__(self, items: list[dict[str, Any]]) -> TokenBatch:
        """One batch of token rows."""
        lengths = [len(item["input_ids"]) for item in items]
        width = -(-max(lengths) // self.multiple) * self.multiple
        input_ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
        for row, item in enumerate(items):
            input_ids[row, : lengths[row]] = torch.tensor(item["input_ids"])
            labels[row, : lengths[row]] = torch.tensor(item["labels"])
        packed = items[0].get("position_ids") is not None
        weights = None
        if any(item.get("weights") for item in items):  # per-token loss weights; padding weighs 0
            weights = torch.zeros((len(items), width), dtype=torch.float32)
            for row, item in enumerate(items):
                weights[row, : lengths[row]] = torch.tensor(item.get("weights") or [1.0] * lengths[row])
        return TokenBatch(
            input_ids=input_ids,
            labels=labels,
            attention_mask=None if packed else _mask(lengths, width),
            position_ids=_positions(items, width) if packed else None,
            n_tokens=torch.tensor(sum(lengths)) if packed else None,  # no attention mask to count real tokens from
            normaliser=_normaliser(items),
            rows=[item["rows"] for item in items] if items[0].get("rows") is not None else None,
            weights=weights,
        )


def _mask(lengths: list[int], width: int) -> torch.Tensor:
    """(len(lengths), width) attention mask of right-padded rows."""
    return (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()


def _positions(items: list[dict[str, Any]], width: int) -> torch.Tensor:
    """(len(items), width) position ids of packed rows; the padding after a row's documents is one more document."""
    positions = torch.arange(width).repeat(len(items), 1)
    for row, item in enumerate(items):
        n = len(item["position_ids"])
        positions[row, :n] = torch.tensor(item["position_ids"])
        positions[row, n:] = torch.arange(width - n)
    return positions


def _normaliser(items: list[dict[str, Any]]) -> torch.Tensor | None:
    """The step's normaliser that the planner gave every item of the micro-batch (None outside planned batches)."""
    value = items[0].get("normaliser")
    return None if value is None else torch.tensor(float(value))


class PromptCollator:
    """Left-pads generation prompts (`prompt_ids`) so every row ends where generation starts."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[dict[str, Any]]) -> PromptBatch:
        """One batch of prompts, with their row indices and reference texts."""
        width = max(len(item["prompt_ids"]) for item in items)
        input_ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, item in enumerate(items):
            n = len(item["prompt_ids"])
            input_ids[row, width - n :] = torch.tensor(item["prompt_ids"])
            attention_mask[row, width - n :] = 1
        return PromptBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            index=torch.tensor([item["index"] for item in items]),
            references=[item["reference"] for item in items],
        )


def _pad_rows(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids`, `labels` and `attention_mask` of (ids, labels) rows."""
    lengths = [len(ids) for ids, _ in rows]
    input_ids = torch.full((len(rows), max(lengths)), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), max(lengths)), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, row_labels) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor(row_labels)
    return {"input_ids": input_ids, "labels": labels, "attention_mask": _mask(lengths, max(lengths))}


class PairCollator:
    """B preference pairs -> one batch of 2B rows, chosen first (rows 0..B-1) then rejected, for one forward pass."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[dict[str, Any]]) -> PairBatch:
        """One batch of pairs, with their row `index` (for precomputed reference log-probs) and `margin`, if any."""
        rows = [(item["chosen_ids"], item["chosen_labels"]) for item in items]
        rows += [(item["rejected_ids"], item["rejected_labels"]) for item in items]
        with_margin = items[0].get("margin") is not None  # a column of the data (reward models), or absent
        return PairBatch(
            **_pad_rows(rows, self.pad_id),
            normaliser=_normaliser(items),
            index=torch.tensor([item["index"] for item in items]),
            margin=torch.tensor([float(item["margin"]) for item in items]) if with_margin else None,
        )


def split_completion(ids: list[int], labels: list[int]) -> int:
    """Index of the first trained token: where the prompt ends and the completion starts."""
    return next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)


class UnpairedCollator:
    """B unpaired (KTO) examples -> 2B rows: the examples, then B mismatched prompt/completion rows.

    Row B + i is prompt i followed by completion i + 1 (mod B): KTO's estimate of KL(policy || reference) on
    completions unrelated to their prompt (Ethayarajh et al. 2024). With B = 1 the row is the example itself.
    """

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[dict[str, Any]]) -> UnpairedBatch:
        """One batch of 2B rows, with `desirable` (B,) and the examples' `index`."""
        rows = [(item["input_ids"], item["labels"]) for item in items]
        cuts = [split_completion(ids, labels) for ids, labels in rows]
        n = len(items)
        for i in range(n):
            j = (i + 1) % n
            prompt, completion = rows[i][0][: cuts[i]], slice(cuts[j], None)
            rows.append((prompt + rows[j][0][completion], [IGNORE_INDEX] * cuts[i] + rows[j][1][completion]))
        return UnpairedBatch(
            **_pad_rows(rows, self.pad_id),
            normaliser=_normaliser(items),
            index=torch.tensor([item["index"] for item in items]),
            desirable=torch.tensor([item["desirable"] for item in items]),
        )
