"""The map-style datasets the batch planner samples from: encoded rows in, one item (a plain dict) per key out.

Keys are item indices, or `(key, normaliser)` pairs from `PlannedBatchSampler`: the pair's second value (trained
tokens, or items, of the whole optimizer step) travels in the item to the collator, which puts it into the batch
(`normaliser`) for exact loss normalisation. Every dataset has `lengths` (tokens per item, for length grouping); the
ones that train also have `trained` (what the planner sums into the normaliser).
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset


def _split_key(key: Any) -> tuple[Any, int | None]:
    """(item key, the step's normaliser or None) of a plain key or a planner's `(key, normaliser)` pair."""
    return key if isinstance(key, tuple) else (key, None)


class TokenDataset(Dataset):
    """Encoded rows (`input_ids`, `labels`), one item per example or per pack of examples (SFT).

    An item holds `input_ids`, `labels`, `position_ids` (restarting per example; None unless packed), `rows` (the
    examples in it), `weights` (per-token loss weights, only when the data has some) and `normaliser` (trained
    tokens in the whole optimizer step; None outside planned batches). A planner's key may be a tuple of example
    indices: one row packed from those examples (the planner packs by step).

    Args:
        rows: Sequence of dicts (e.g. a `datasets.Dataset`) with `input_ids`, `labels`, `length` and `n_trained`.
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
        self.weighted = "weights" in getattr(rows, "column_names", ())  # per-token loss weights (some != 1)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, key: Any) -> dict[str, Any]:
        index, normaliser = _split_key(key)
        if isinstance(index, tuple):  # a row packed by the planner
            item = self._packed(list(index))
        elif self.packs is not None:
            item = self._packed(list(self.packs[index]))
        else:
            row = self.rows[index]
            item = {"input_ids": row["input_ids"], "labels": row["labels"], "position_ids": None, "rows": [index]}
            if self.weighted:
                item["weights"] = row["weights"] or [1.0] * len(row["input_ids"])
        return {**item, "normaliser": normaliser}

    def _packed(self, indices: list[int]) -> dict[str, Any]:
        """The examples `indices` concatenated into one row, positions restarting per example."""
        docs = self.rows[indices]
        item = {
            "input_ids": [t for ids in docs["input_ids"] for t in ids],
            "labels": [t for labels in docs["labels"] for t in labels],
            "position_ids": [p for ids in docs["input_ids"] for p in range(len(ids))],
            "rows": indices,
        }
        if self.weighted:
            pairs = zip(docs["weights"], docs["input_ids"], strict=True)
            item["weights"] = [w for weights, ids in pairs for w in (weights or [1.0] * len(ids))]
        return item


class ExampleDataset(Dataset):
    """Encoded preference rows, one item per pair (or per unpaired example): the row, its `index`, `normaliser`.

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
        index, normaliser = _split_key(key)
        return {**self.rows[index], "index": index, "normaliser": normaliser}


class PromptDataset(Dataset):
    """Generation prompts (`prompt_ids`, `reference`); items carry their row `index` so outputs keep input order."""

    def __init__(self, rows: Any) -> None:
        self.rows = rows
        self.lengths = [len(ids) for ids in rows["prompt_ids"]]

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, _ = _split_key(key)
        return {**self.rows[index], "index": index}
