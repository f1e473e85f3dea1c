"""Preference data (TRL's field names) -> encoded pairs or unpaired examples, for reward models, DPO and KTO.

Formats: `prompt`/`chosen`/`rejected` (plain strings or lists of messages); implicit-prompt `chosen`/`rejected`
(the shared beginning is the prompt: common leading messages, or the common leading text); unpaired
`prompt`/`completion`/`label` (KTO: label true = desirable). Each side is encoded exactly like an SFT example
(`ExampleEncoder`: chat template, loss mask on the completion, truncation policy), so chosen and rejected carry
labels only on their completion tokens. A pair in which either side trains on nothing is dropped and counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import datasets
from transformers import PreTrainedTokenizerBase

from lightft.data.formats import Example, prompt_completion
from lightft.data.pipeline import SplitStats, filter_untrainable, formatted_rows, tokenizer_fingerprint
from lightft.data.sources import DatasetSpec
from lightft.data.templates import Encoded, ExampleEncoder, Truncation
from lightft.errors import LightFTError

PAIRED_FORMATS = ("preference", "implicit_preference")
PREFERENCE_FORMATS = (*PAIRED_FORMATS, "unpaired_preference")


def to_pair(row: Mapping[str, Any], fmt: str, where: str) -> tuple[Example, Example]:
    """(prompt + chosen, prompt + rejected) of one preference row."""
    for name in ("chosen", "rejected") if fmt == "implicit_preference" else ("prompt", "chosen", "rejected"):
        if row.get(name) is None:
            raise LightFTError(f"{where}: field '{name}' is missing or null (format {fmt}); fix the row or drop it.")
    if row["chosen"] == row["rejected"]:
        raise LightFTError(
            f"{where}: 'chosen' and 'rejected' are identical, a pair that teaches nothing; fix the row or drop it."
        )
    if fmt == "implicit_preference":
        prompt, chosen, rejected = split_implicit_prompt(row["chosen"], row["rejected"], where)
    else:
        prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
    return prompt_completion(prompt, chosen, where, "chosen"), prompt_completion(prompt, rejected, where, "rejected")


def to_unpaired(row: Mapping[str, Any], where: str) -> tuple[Example, bool]:
    """(prompt + completion, desirable) of one KTO row."""
    for name in ("prompt", "completion", "label"):
        if row.get(name) is None:
            raise LightFTError(f"{where}: field '{name}' is missing or null (format unpaired_preference); fix the row.")
    label = row["label"]
    if not isinstance(label, bool):
        raise LightFTError(f"{where}: field 'label' must be true (desirable) or false (undesirable), got {label!r}.")
    return prompt_completion(row["prompt"], row["completion"], where), label


def split_implicit_prompt(chosen: Any, rejected: Any, where: str) -> tuple[Any, Any, Any]:
    """(prompt, chosen completion, rejected completion) from two full texts or conversations sharing a beginning."""
    if isinstance(chosen, list) and isinstance(rejected, list):
        k = 0
        while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
            k += 1
        if k == 0 or k == len(chosen) or k == len(rejected):
            raise LightFTError(
                f"{where}: 'chosen' and 'rejected' must share leading messages (the prompt) and then differ; "
                "give an explicit 'prompt' field instead."
            )
        return chosen[:k], chosen[k:], rejected[k:]
    if isinstance(chosen, str) and isinstance(rejected, str):
        k = 0
        while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
            k += 1
        k = chosen.rfind(" ", 0, k + 1) + 1 if k < len(chosen) and " " in chosen[:k] else k  # cut at a word start
        if k == 0 or k == len(chosen) or k == len(rejected):
            raise LightFTError(
                f"{where}: 'chosen' and 'rejected' share no prompt text (or one contains the other); give an "
                "explicit 'prompt' field instead."
            )
        return chosen[:k], chosen[k:], rejected[k:]
    raise LightFTError(f"{where}: 'chosen' and 'rejected' must both be strings or both be lists of messages.")


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
    spec: DatasetSpec, key: str, tokenizer: PreTrainedTokenizerBase, max_length: int, truncation: Truncation
) -> tuple[datasets.Dataset, SplitStats, bool]:
    """Encoded split, its statistics, and whether it is paired (chosen/rejected) or unpaired (KTO).

    Paired rows: `chosen_ids`, `chosen_labels`, `rejected_ids`, `rejected_labels`; unpaired rows: `input_ids`,
    `labels`, `desirable`. Both: `length` (tokens) and `n_trained`; pairs keep a `margin` column when the data has
    one. `max_length` bounds each sequence.
    """
    rows, fmt, where = formatted_rows(spec, key, PREFERENCE_FORMATS)
    encoder = ExampleEncoder(tokenizer, max_length, truncation)
    paired = fmt in PAIRED_FORMATS
    with_margin = paired and "margin" in rows.column_names  # reward models: required score gap (Llama 2)

    def encode(row: dict[str, Any], index: int) -> dict[str, Any]:
        if paired:
            chosen, rejected = to_pair(row, fmt, where(index))
            columns = _pair_columns(encoder.encode(chosen), encoder.encode(rejected))
            return {**columns, "margin": float(row["margin"])} if with_margin else columns
        example, desirable = to_unpaired(row, where(index))
        return _unpaired_columns(encoder.encode(example), desirable)

    fingerprint = tokenizer_fingerprint(rows, tokenizer, "preference", fmt, max_length, truncation)
    encoded = rows.map(
        encode, with_indices=True, remove_columns=rows.column_names, new_fingerprint=fingerprint, desc="tokenizing"
    )
    kept, stats = filter_untrainable(encoded, spec, key, where)
    return kept, stats, paired
