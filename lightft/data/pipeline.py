"""read -> format -> tokenize -> filter, for one split, cached by `datasets`.

The result has columns `input_ids`, `labels`, `length`, `n_trained`. Examples that end up with no trained token
(no assistant turn, or truncated away) are counted and dropped; a split left empty is an error. The cache key
covers the file, the tokenizer and every encoding setting, so a changed setting never reuses stale ids.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import datasets
from transformers import PreTrainedTokenizerBase

from lightft.data.formats import SFT_FORMATS, check_columns, detect_format, prompt_only, remap, to_example
from lightft.data.sources import DatasetSpec, Locator, load_rows
from lightft.data.templates import ExampleEncoder, Truncation
from lightft.errors import LightFTError

ENCODING_VERSION = "2"
# formats a generation prompt can be taken from (the prompt, and the trained part as the reference answer)
PROMPT_FORMATS = ("messages", "preference", "implicit_preference", "unpaired_preference", "prompt_completion",
                  "alpaca", "prompt_only")  # fmt: skip


@dataclass(frozen=True)
class SplitStats:
    """What encoding did to a split."""

    rows: int
    kept: int
    truncated: int
    too_long: int
    zero_trained: int
    first_zero: str | None = None

    def summary(self, name: str, unit: str = "examples") -> str:
        """One line for the log."""
        return (
            f"{name}: {self.kept}/{self.rows} {unit} kept; {self.truncated} truncated, {self.too_long} dropped as "
            f"too long, {self.zero_trained} dropped with no trained token"
            + (f" (first: {self.first_zero})" if self.first_zero else "")
        )


def _tokenizer_digest(tokenizer: PreTrainedTokenizerBase) -> str:
    probe = tokenizer("lightft <|probe|> 123", add_special_tokens=True)["input_ids"]
    parts = [tokenizer.name_or_path, len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id]
    return repr([*parts, tokenizer.chat_template, probe])


def tokenizer_fingerprint(rows: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, *parts: Any) -> str:
    """Cache key of an encoded split: the rows, the tokenizer and every encoding setting."""
    text = repr((rows._fingerprint, ENCODING_VERSION, _tokenizer_digest(tokenizer), *parts))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def formatted_rows(
    spec: DatasetSpec, key: str, allowed: tuple[str, ...] = SFT_FORMATS
) -> tuple[datasets.Dataset, str, Locator]:
    """Rows with the column mapping applied, their format (one of `allowed`) and a row locator for errors."""
    rows, where = load_rows(spec, key)
    if spec.columns:
        columns = dict(spec.columns)
        rows = rows.map(lambda row: remap(row, columns), desc="mapping columns")
    name = f"{key} ({spec.path})"
    fmt = detect_format(rows.column_names, name, allowed) if spec.format == "auto" else spec.format
    check_columns(fmt, rows.column_names, name, allowed)
    return rows, fmt, where


def encode_split(
    spec: DatasetSpec, key: str, tokenizer: PreTrainedTokenizerBase, max_length: int, truncation: Truncation
) -> tuple[datasets.Dataset, SplitStats]:
    """Tokenized, filtered split and its statistics."""
    rows, fmt, where = formatted_rows(spec, key)
    encoder = ExampleEncoder(tokenizer, max_length, truncation)
    chat = bool(tokenizer.chat_template)

    def encode(row: dict[str, Any], index: int) -> dict[str, Any]:
        encoded = encoder.encode(to_example(row, fmt, chat, where(index)))
        if encoded is None:
            return {"input_ids": [], "labels": [], "length": 0, "n_trained": 0, "truncated": True, "too_long": True}
        return {
            "input_ids": encoded.input_ids,
            "labels": encoded.labels,
            "length": len(encoded.input_ids),
            "n_trained": encoded.n_trained,
            "truncated": encoded.truncated,
            "too_long": False,
        }

    fingerprint = tokenizer_fingerprint(rows, tokenizer, fmt, max_length, truncation)
    encoded = rows.map(
        encode, with_indices=True, remove_columns=rows.column_names, new_fingerprint=fingerprint, desc="tokenizing"
    )
    return filter_untrainable(encoded, spec, key, where)


def filter_untrainable(
    encoded: datasets.Dataset, spec: DatasetSpec, key: str, where: Locator
) -> tuple[datasets.Dataset, SplitStats]:
    """Drop rows with no trained token (counted, the first one named); an empty result is an error."""
    too_long = sum(encoded["too_long"])
    flags = zip(encoded["n_trained"], encoded["too_long"], strict=True)
    zero = [i for i, (n, long) in enumerate(flags) if n == 0 and not long]
    kept = encoded.filter(lambda row: row["n_trained"] > 0, desc="dropping untrainable examples")
    stats = SplitStats(
        rows=len(encoded),
        kept=len(kept),
        truncated=sum(encoded["truncated"]) - too_long,
        too_long=too_long,
        zero_trained=len(zero),
        first_zero=where(zero[0]) if zero else None,
    )
    if not len(kept):
        reason = f"all {len(encoded)} examples train on zero tokens" if zero else "no example is left"
        hint = f" (e.g. {stats.first_zero})" if zero else ""
        raise LightFTError(
            f"{key} ({spec.path}): {reason}{hint} after filtering; check the format (assistant turns / completion), "
            "max_length and truncation."
        )
    return kept.remove_columns(["truncated", "too_long"]), stats


def encode_prompts(
    spec: DatasetSpec, key: str, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> datasets.Dataset:
    """Generation prompts (`prompt_ids`) and, where the data has one, the reference answer text (`reference`)."""
    rows, fmt, where = formatted_rows(spec, key, PROMPT_FORMATS)
    encoder = ExampleEncoder(tokenizer, max_length, "left")
    chat = bool(tokenizer.chat_template)

    def encode(row: dict[str, Any], index: int) -> dict[str, Any]:
        example = to_example(row, fmt, chat, where(index))
        ids = encoder.encode_prompt(prompt_only(example))[-max_length:]
        return {"prompt_ids": ids, "reference": _reference(example)}

    fingerprint = tokenizer_fingerprint(rows, tokenizer, "prompts", fmt, max_length)
    return rows.map(encode, with_indices=True, remove_columns=rows.column_names, new_fingerprint=fingerprint)


def _reference(example: Any) -> str:
    if example.conversational:
        return "\n".join(example.messages[i]["content"] for i in example.trained_turns)
    return "".join(text for text, trained in example.segments if trained)
