"""Preference data (TRL's field names) -> encoded pairs or unpaired examples, for reward models, DPO and KTO.

Formats: `prompt`/`chosen`/`rejected` (plain strings or lists of messages); implicit-prompt `chosen`/`rejected`
(the shared beginning is the prompt: common leading messages, or the common leading text); unpaired
`prompt`/`completion`/`label` (KTO: label true = desirable). Each side is encoded exactly like an SFT example
(`ExampleEncoder`: chat template, loss mask on the completion, truncation policy), so chosen and rejected carry
labels only on their completion tokens. A pair in which either side trains on nothing is dropped and counted.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import datasets
from transformers import PreTrainedTokenizerBase

from lightft.data.cache import cached
from lightft.data.formats import to_pair, to_unpaired
from lightft.data.mixture import Mixture, encode_mixture
from lightft.data.pipeline import SplitStats, cache_key, filter_untrainable, formatted_rows, tokenizer_fingerprint
from lightft.data.sources import DatasetSpec
from lightft.data.templates import Encoded, ExampleEncoder, Truncation
from lightft.errors import LightFTError

PAIRED_FORMATS = ("preference", "implicit_preference")
PREFERENCE_FORMATS = (*PAIRED_FORMATS, "unpaired_preference")


def _side(encoded: Encoded | None) -> dict[str, Any]:
    if encoded is None:
        return {"ids": [], "labels": [], "n": 0, "truncated": True, "too_long": True}
    return {
        "ids": encoded.input_ids,
        "labels": encoded.labels,
        "n": encoded.n_trained,
        "truncated": encoded.truncated,
        "too_long": False,
    }


def _pair_columns(chosen: Encoded | None, rejected: Encoded | None) -> dict[str, Any]:
    c, r = _side(chosen), _side(rejected)
    return {
        "chosen_ids": c["ids"],
        "chosen_labels": c["labels"],
        "rejected_ids": r["ids"],
        "rejected_labels": r["labels"],
        "length": len(c["ids"]) + len(r["ids"]),
        "n_trained": min(c["n"], r["n"]),  # a pair trains only when both sides do
        "truncated": c["truncated"] or r["truncated"],
        "too_long": c["too_long"] or r["too_long"],
    }


def _unpaired_columns(encoded: Encoded | None, desirable: bool) -> dict[str, Any]:
    side = _side(encoded)
    return {
        "input_ids": side["ids"],
        "labels": side["labels"],
        "desirable": desirable,
        "length": len(side["ids"]),
        "n_trained": side["n"],
        "truncated": side["truncated"],
        "too_long": side["too_long"],
    }


def encode_preferences(
    spec: DatasetSpec | Mixture,
    key: str,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    truncation: Truncation,
    num_proc: int | None = None,
) -> tuple[datasets.Dataset, SplitStats, bool]:
    """Encoded split, its statistics, and whether it is paired (chosen/rejected) or unpaired (KTO).

    Paired rows: `chosen_ids`, `chosen_labels`, `rejected_ids`, `rejected_labels`; unpaired rows: `input_ids`,
    `labels`, `desirable`. Both: `length` (tokens) and `n_trained`; pairs keep a `margin` column when the data has
    one (`spec.margin`: a `margin` column, or `score_chosen - score_rejected`). `max_length` bounds each sequence.
    Cached by content (`lightft.data.cache`).
    """
    if isinstance(spec, Mixture):
        settings = (tokenizer, max_length, truncation, num_proc)
        mixed, extras, text = encode_mixture(
            spec,
            lambda source, at: _encoded_source(source, at, *settings),
            kind=lambda extra: "paired" if extra[1] else "unpaired (KTO)",
        )
        return mixed, SplitStats.combined([stats for stats, _ in extras], text), extras[0][1]

    def build(in_memory: bool) -> tuple[datasets.Dataset, dict[str, Any]]:
        rows, fmt, where = formatted_rows(spec, key, PREFERENCE_FORMATS, in_memory)
        encoder = ExampleEncoder(tokenizer, max_length, truncation)
        paired = fmt in PAIRED_FORMATS
        margin = _margin_source(spec, rows.column_names, paired, key)

        def encode(row: dict[str, Any], index: int) -> dict[str, Any]:
            if paired:
                chosen, rejected = to_pair(row, fmt, where(index))
                columns = _pair_columns(encoder.encode(chosen), encoder.encode(rejected))
                return {**columns, "margin": _margin(row, margin, where(index))} if margin else columns
            example, desirable = to_unpaired(row, where(index))
            return _unpaired_columns(encoder.encode(example), desirable)

        fingerprint = tokenizer_fingerprint(rows, tokenizer, "preference", fmt, max_length, truncation, repr(spec))
        encoded = rows.map(encode, with_indices=True, remove_columns=rows.column_names, new_fingerprint=fingerprint,
                           desc="tokenizing", num_proc=num_proc, keep_in_memory=in_memory)  # fmt: skip
        kept, stats = filter_untrainable(encoded, spec, key, where, in_memory)
        return kept, {"stats": dataclasses.asdict(stats), "paired": paired}

    kept, meta = cached(cache_key(spec, tokenizer, "preference", max_length, truncation), build)
    return kept, SplitStats(**meta["stats"]), meta["paired"]


def _encoded_source(
    spec: DatasetSpec,
    key: str,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    truncation: Truncation,
    num_proc: int | None,
) -> tuple[datasets.Dataset, tuple[SplitStats, bool]]:
    rows, stats, paired = encode_preferences(spec, key, tokenizer, max_length, truncation, num_proc)
    return rows, (stats, paired)


def _margin_source(spec: DatasetSpec, columns: list[str], paired: bool, key: str) -> str | None:
    """Where a pair's margin comes from: `margin` (its column), `scores` (score_chosen - score_rejected) or None."""
    if not paired or spec.margin == "none":
        return None
    if spec.margin == "scores":
        missing = [c for c in ("score_chosen", "score_rejected") if c not in columns]
        if missing:
            raise LightFTError(
                f"{key}.margin: scores needs the columns score_chosen and score_rejected; '{spec.path}' lacks "
                f"{missing} (map them with columns: {{score_chosen: ...}})."
            )
        return "scores"
    return "margin" if "margin" in columns else None  # reward models: required score gap (Llama 2)


def _margin(row: dict[str, Any], source: str, where: str) -> float:
    names = ("margin",) if source == "margin" else ("score_chosen", "score_rejected")
    values = [row.get(name) for name in names]
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in values):
        raise LightFTError(f"{where}: {' and '.join(names)} must be numbers, got {values}; fix the row or drop it.")
    return float(values[0]) if source == "margin" else float(values[0] - values[1])
