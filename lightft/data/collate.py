"""Encoded examples -> batches: padding, and packing in which documents never attend to each other.

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
from torch.utils.data import Dataset

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


class TokenDataset(Dataset):
    """Encoded rows (`input_ids`, `labels`), one item per example or per pack of examples.

    Keys may be plain indices or `(key, step_tokens)` pairs from `PlannedBatchSampler`; the pair's second value
    (trained tokens in the whole optimizer step) travels into the batch for exact loss normalisation. In a pair,
    the key may be a tuple of example indices: one row packed from those examples (the planner packs by step).

    Args:
        rows: Sequence of dicts (e.g. a `datasets.Dataset`) with `input_ids` and `labels`.
        packs: Lists of row indices concatenated into one item, or None for no packing.
    """

    def __init__(self, rows: Any, packs: list[list[int]] | None = None) -> None:
        self.rows, self.packs = rows, packs
        lengths, trained = list(rows["length"]), list(rows["n_trained"])
        units = packs if packs is not None else [[i] for i in range(len(lengths))]
        self.lengths = [sum(lengths[i] for i in unit) for unit in units]
        self.trained = [sum(trained[i] for i in unit) for unit in units]
        self.docs = [len(unit) for unit in units]  # examples per item
        self.n_examples = len(lengths)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, key: Any) -> dict[str, Any]:
        index, step_tokens = key if isinstance(key, tuple) else (key, None)
        if isinstance(index, tuple):  # a row packed by the planner
            item = self._packed(list(index))
        elif self.packs is not None:
            item = self._packed(list(self.packs[index]))
        else:
            row = self.rows[index]
            item = {"input_ids": row["input_ids"], "labels": row["labels"], "rows": [index]}
        if step_tokens is not None:
            item["step_tokens"] = step_tokens
        return item

    def _packed(self, indices: list[int]) -> dict[str, Any]:
        """The examples `indices` concatenated into one row, positions restarting per example."""
        docs = self.rows[indices]
        return {
            "input_ids": [t for ids in docs["input_ids"] for t in ids],
            "labels": [t for labels in docs["labels"] for t in labels],
            "position_ids": [p for ids in docs["input_ids"] for p in range(len(ids))],
            "rows": indices,
        }


class Collator:
    """Right-pads a list of items into tensors.

    Unpacked items get an `attention_mask`; packed items get `position_ids` and no mask (see module docstring).

    Args:
        pad_id: Token id used for padding (never EOS after `fix_pad_token`).
        pad_to_multiple_of: Round the padded length up (tensor-core friendly shapes on GPU).
    """

    def __init__(self, pad_id: int, pad_to_multiple_of: int = 1) -> None:
        self.pad_id, self.multiple = pad_id, max(1, pad_to_multiple_of)

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Tensors of one batch."""
        width = max(len(item["input_ids"]) for item in items)
        width = -(-width // self.multiple) * self.multiple
        batch = {
            "input_ids": torch.full((len(items), width), self.pad_id, dtype=torch.long),
            "labels": torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long),
        }
        packed = "position_ids" in items[0]
        if packed:
            batch["position_ids"] = torch.arange(width).repeat(len(items), 1)
        else:
            batch["attention_mask"] = torch.zeros((len(items), width), dtype=torch.long)
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            batch["input_ids"][row, :n] = torch.tensor(item["input_ids"])
            batch["labels"][row, :n] = torch.tensor(item["labels"])
            if packed:
                batch["position_ids"][row, :n] = torch.tensor(item["position_ids"])
                batch["position_ids"][row, n:] = torch.arange(width - n)  # padding: its own document
            else:
                batch["attention_mask"][row, :n] = 1
        if packed:  # no attention mask to count real tokens from
            batch["n_tokens"] = torch.tensor(sum(len(item["input_ids"]) for item in items))
        if "step_tokens" in items[0]:
            batch["step_tokens"] = torch.tensor(float(items[0]["step_tokens"]))
        if "rows" in items[0]:
            batch["rows"] = [item["rows"] for item in items]  # the dataset rows in each batch row (for diagnostics)
        return batch


class PromptCollator:
    """Left-pads generation prompts (`prompt_ids`) so every row ends where generation starts."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Tensors of one batch, plus row indices and reference texts."""
        width = max(len(item["prompt_ids"]) for item in items)
        input_ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, item in enumerate(items):
            n = len(item["prompt_ids"])
            input_ids[row, width - n :] = torch.tensor(item["prompt_ids"])
            attention_mask[row, width - n :] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "index": torch.tensor([item["index"] for item in items]),
            "reference": [item.get("reference", "") for item in items],
        }


class ExampleDataset(Dataset):
    """Encoded preference rows, one item per pair (or per unpaired example) with its row index.

    The batch planner normalises by items, not tokens (`trained` is 1 per item): preference losses are means over
    pairs, so the step's normaliser is its number of pairs.
    """

    def __init__(self, rows: Any) -> None:
        self.rows = rows
        self.lengths = list(rows["length"])
        self.trained = [1] * len(self.lengths)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, step_items = key if isinstance(key, tuple) else (key, None)
        item = {**self.rows[index], "index": index}
        if step_items is not None:
            item["step_items"] = step_items
        return item


def _pad_rows(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids`, `labels` and `attention_mask` of (ids, labels) rows."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (ids, row_labels) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor(row_labels)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def _common(items: list[dict[str, Any]], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    batch["index"] = torch.tensor([item["index"] for item in items])
    if "step_items" in items[0]:
        batch["step_items"] = torch.tensor(float(items[0]["step_items"]))
    return batch


class PairCollator:
    """B preference pairs -> one batch of 2B rows, chosen first (rows 0..B-1) then rejected, for one forward pass."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Tensors of one batch, plus the pairs' row `index` (for precomputed reference log-probs)."""
        rows = [(item["chosen_ids"], item["chosen_labels"]) for item in items]
        rows += [(item["rejected_ids"], item["rejected_labels"]) for item in items]
        batch = _pad_rows(rows, self.pad_id)
        if "margin" in items[0]:
            batch["margin"] = torch.tensor([float(item["margin"]) for item in items])
        return _common(items, batch)


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

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Tensors of one batch, plus `desirable` (B,) and the rows' `index`."""
        rows = [(item["input_ids"], item["labels"]) for item in items]
        cuts = [split_completion(ids, labels) for ids, labels in rows]
        n = len(items)
        for i in range(n):
            j = (i + 1) % n
            prompt, completion = rows[i][0][: cuts[i]], slice(cuts[j], None)
            rows.append((prompt + rows[j][0][completion], [IGNORE_INDEX] * cuts[i] + rows[j][1][completion]))
        batch = _pad_rows(rows, self.pad_id)
        batch["desirable"] = torch.tensor([item["desirable"] for item in items])
        return _common(items, batch)
