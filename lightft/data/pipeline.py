"""read -> format -> tokenize -> filter, for one split, cached by `datasets`.

The result has columns `input_ids`, `labels`, `length`, `n_trained`. Examples that end up with no trained token
(no assistant turn, or truncated away) are counted and dropped; a split left empty is an error. The cache key
covers the file, the tokenizer and every encoding setting, so a changed setting never reuses stale ids.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any

import datasets
from transformers import PreTrainedTokenizerBase

from lightft.data.cache import cached
from lightft.data.formats import SFT_FORMATS, check_columns, detect_format, prompt_only, remap, to_example
from lightft.data.mixture import Mixture, encode_mixture
from lightft.data.sources import DatasetSpec, Locator, load_rows
from lightft.data.templates import ExampleEncoder, Truncation
from lightft.errors import LightFTError

ENCODING_VERSION = "3"  # 3: loss weights per token, tools, ShareGPT
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
    mixture: str | None = None  # a mixture's draws: "mixture of 2: a.jsonl 80 of 40, b.jsonl 40 of 100"

    def summary(self, name: str, unit: str = "examples") -> str:
        """One line for the log."""
        return (
            f"{name}: {self.kept}/{self.rows} {unit} kept; {self.truncated} truncated, {self.too_long} dropped as "
            f"too long, {self.zero_trained} dropped with no trained token"
            + (f" (first: {self.first_zero})" if self.first_zero else "")
            + (f"; {self.mixture}" if self.mixture else "")
        )

    @classmethod
    def combined(cls, parts: list[SplitStats], mixture: str) -> SplitStats:
        """The statistics of a mixture's sources added up, with the description of its draws."""
        first = next((p.first_zero for p in parts if p.first_zero), None)
        sums = {f: sum(getattr(p, f) for p in parts) for f in ("rows", "kept", "truncated", "too_long", "zero_trained")}
        return cls(**sums, first_zero=first, mixture=mixture)


def _tokenizer_digest(tokenizer: PreTrainedTokenizerBase) -> str:
    probe = tokenizer("lightft <|probe|> 123", add_special_tokens=True)["input_ids"]
    parts = [tokenizer.name_or_path, len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id]
    return repr([*parts, tokenizer.chat_template, probe])


def tokenizer_fingerprint(rows: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, *parts: Any) -> str:
    """Cache key of an encoded split: the rows, the tokenizer and every encoding setting."""
    text = repr((rows._fingerprint, ENCODING_VERSION, _tokenizer_digest(tokenizer), *parts))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def formatted_rows(
    spec: DatasetSpec | Mixture, key: str, allowed: tuple[str, ...] = SFT_FORMATS, in_memory: bool = False
) -> tuple[datasets.Dataset, str, Locator]:
    """Rows with the column mapping applied (in memory with `in_memory`, else in `datasets`' cache), their format
    (one of `allowed`) and a row locator for errors (a mixture: those of its first source).
    """  # noqa: D205
    if isinstance(spec, Mixture):
        spec, key = spec.sources[0], f"{key}[0]"
    rows, where = load_rows(spec, key)
    if spec.columns:
        columns = dict(spec.columns)
        rows = rows.map(lambda row: remap(row, columns), desc="mapping columns", keep_in_memory=in_memory)
    name = f"{key} ({spec.path})"
    fmt = detect_format(rows.column_names, name, allowed) if spec.format == "auto" else spec.format
    check_columns(fmt, rows.column_names, name, allowed)
    return rows, fmt, where


def encode_split(
    spec: DatasetSpec | Mixture,
    key: str,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    truncation: Truncation,
    num_proc: int | None = None,
) -> tuple[datasets.Dataset, SplitStats]:
    """Tokenized, filtered split and its statistics (cached by content: `lightft.data.cache`)."""
    if isinstance(spec, Mixture):
        mixed, stats, text = encode_mixture(
            spec, lambda source, at: encode_split(source, at, tokenizer, max_length, truncation, num_proc)
        )
        return mixed, SplitStats.combined(stats, text)

    def build(in_memory: bool) -> tuple[datasets.Dataset, dict[str, Any]]:
        rows, fmt, where = formatted_rows(spec, key, in_memory=in_memory)
        encoder = ExampleEncoder(tokenizer, max_length, truncation)
        chat, conversations = bool(tokenizer.chat_template), spec.conversations

        def encode(row: dict[str, Any], index: int) -> dict[str, Any]:
            encoded = encoder.encode(to_example(row, fmt, chat, where(index), conversations))
            if encoded is None:
                return {"input_ids": [], "labels": [], "weights": [], "length": 0, "n_trained": 0, "truncated": True,
                        "too_long": True}  # fmt: skip
            return {
                "input_ids": encoded.input_ids,
                "labels": encoded.labels,
                "weights": encoded.weights or [],  # empty: every trained token weighs 1
                "length": len(encoded.input_ids),
                "n_trained": encoded.n_trained,
                "truncated": encoded.truncated,
                "too_long": False,
            }

        fingerprint = tokenizer_fingerprint(rows, tokenizer, fmt, max_length, truncation, repr(spec))
        encoded = rows.map(encode, with_indices=True, remove_columns=rows.column_names, new_fingerprint=fingerprint,
                           desc="tokenizing", num_proc=num_proc, keep_in_memory=in_memory)  # fmt: skip
        kept, stats = filter_untrainable(encoded, spec, key, where, in_memory)
        if not any(kept["weights"]):
            kept = kept.remove_columns("weights")
        return kept, dataclasses.asdict(stats)

    parts = cache_key(spec, tokenizer, "sft", max_length, truncation)
    kept, stats = cached(parts, build)
    return kept, SplitStats(**stats)


def cache_key(spec: DatasetSpec, tokenizer: PreTrainedTokenizerBase, *settings: Any) -> tuple[Any, ...] | None:
    """What an encoding depends on: the source's content and options, the tokenizer, the settings; None: Hub data."""
    digest = spec.digest()
    return None if digest is None else (digest, ENCODING_VERSION, _tokenizer_digest(tokenizer), *settings)


def filter_untrainable(
    encoded: datasets.Dataset, spec: DatasetSpec, key: str, where: Locator, in_memory: bool = False
) -> tuple[datasets.Dataset, SplitStats]:
    """Drop rows with no trained token (counted, the first one named); an empty result is an error."""
    too_long = sum(encoded["too_long"])
    flags = zip(encoded["n_trained"], encoded["too_long"], strict=True)
    zero = [i for i, (n, long) in enumerate(flags) if n == 0 and not long]
    kept = encoded.filter(
        lambda row: row["n_trained"] > 0, desc="dropping untrainable examples", keep_in_memory=in_memory
    )
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
    spec: DatasetSpec | Mixture,
    key: str,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    num_proc: int | None = None,
) -> datasets.Dataset:
    """Generation prompts (`prompt_ids`) and, where the data has one, the reference answer text (`reference`)."""
    if isinstance(spec, Mixture):
        return encode_mixture(spec, lambda s, at: (encode_prompts(s, at, tokenizer, max_length, num_proc), None))[0]

    def build(in_memory: bool) -> tuple[datasets.Dataset, dict[str, Any]]:
        rows, fmt, where = formatted_rows(spec, key, PROMPT_FORMATS, in_memory)
        encoder = ExampleEncoder(tokenizer, max_length, "left")
        chat, conversations = bool(tokenizer.chat_template), spec.conversations

        def encode(row: dict[str, Any], index: int) -> dict[str, Any]:
            example = to_example(row, fmt, chat, where(index), conversations)
            ids = encoder.encode_prompt(prompt_only(example))[-max_length:]
            return {"prompt_ids": ids, "reference": _reference(example)}

        fingerprint = tokenizer_fingerprint(rows, tokenizer, "prompts", fmt, max_length, repr(spec))
        encoded = rows.map(encode, with_indices=True, remove_columns=rows.column_names, new_fingerprint=fingerprint,
                           desc="tokenizing prompts", num_proc=num_proc, keep_in_memory=in_memory)  # fmt: skip
        return encoded, {}

    return cached(cache_key(spec, tokenizer, "prompts", max_length), build)[0]


def _reference(example: Any) -> str:
    if example.conversational:
        return "\n".join(example.messages[i]["content"] for i in example.trained_turns)
    return "".join(text for text, trained in example.segments if trained)
