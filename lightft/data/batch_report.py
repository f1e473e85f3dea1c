"""The line that says what an optimizer step holds: examples per micro-batch and per step, steps per epoch.

Logged at fit start (rank 0) and printed by `lightft doctor`, so that packing never silently changes how many
optimizer steps an epoch takes: with `batch_size_unit: rows` a packed run is compared with the unpacked one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lightft.data.datasets import TokenDataset
from lightft.data.sampling import PlannedBatchSampler, PlanSummary, count_steps

KEY = "data.init_args"


@dataclass(frozen=True)
class BatchReport:
    """The batch line printed at fit start and by `lightft doctor`, and a warning when packing cuts the steps."""

    line: str
    warning: str | None = None


def report_batches(data: Any, sampler: PlannedBatchSampler, dataset: Any) -> BatchReport:
    """What the training split's plan holds per micro-batch and per optimizer step, and its steps per epoch.

    With packing (or a token budget), also how that compares with the unpacked run counted in examples, and a
    warning when `batch_size_unit: rows` makes an epoch take fewer optimizer steps than unpacked.

    Args:
        data: The data module (`batch_size`, `batch_size_unit`, `packing`, `max_length`).
        sampler: The training split's planner.
        dataset: The training split (`docs` per item and `n_examples` where items are packed rows).
    """
    summary = sampler.summary(getattr(dataset, "docs", None))
    n_examples = getattr(dataset, "n_examples", len(dataset))
    text = describe_batches(data, sampler, summary, tokens=isinstance(dataset, TokenDataset))
    unit, world, accumulate = data.batch_size_unit, sampler.world_size, sampler.accumulate
    if unit == "tokens":
        per_micro = max(1, round(_mean(summary.examples) / (accumulate * world)))
        steps = count_steps(n_examples, per_micro * accumulate * world, world)
        return BatchReport(f"{text} (batch_size_unit: examples with batch_size {per_micro}: {steps:,} steps)")
    if not data.packing:
        return BatchReport(text)
    if unit == "examples":
        return BatchReport(f"{text} (the unpacked run's steps)")
    unpacked = count_steps(n_examples, sampler.global_batch, world)
    text += f" (unpacked with batch_size {data.batch_size}: {unpacked:,} steps)"
    if summary.steps >= unpacked:
        return BatchReport(text)
    warning = (
        f"{KEY}.batch_size_unit: rows with packing: batch_size {data.batch_size} counts packed rows, so an epoch "
        f"takes {summary.steps:,} optimizer steps where unpacked it takes {unpacked:,}; set batch_size_unit: "
        "examples to train on the unpacked run's steps (or raise max_steps / max_epochs)"
    )
    return BatchReport(f"{text}; set batch_size_unit: examples to take the unpacked run's steps", warning)


def describe_batches(data: Any, sampler: PlannedBatchSampler, summary: PlanSummary, tokens: bool = True) -> str:
    """One line: what a micro-batch holds x accumulation x ranks = what an optimizer step holds, steps per epoch.

    Args:
        data: The data module (`batch_size`, `batch_size_unit`, `packing`, `max_length`; `paired` for pairs).
        sampler: The training split's planner.
        summary: Its epoch in figures.
        tokens: Whether items train on tokens (SFT; trained tokens are shown) rather than on pairs.
    """
    noun = "pairs" if getattr(data, "paired", None) and all(data.paired.values()) else "examples"
    rows = f"{_plural(_approx(summary.rows), 'packed row')} of up to {data.max_length:,} tokens"
    unit = data.batch_size_unit
    if unit == "tokens":
        micro = f"up to {data.batch_size:,} tokens ({rows if data.packing else _approx(summary.rows) + ' ' + noun})"
    elif data.packing and unit == "examples":
        micro = f"{data.batch_size} {noun} ({rows})"
    elif data.packing:
        micro = f"{_plural(str(data.batch_size), 'packed row')} of up to {data.max_length:,} tokens"
    else:
        micro = f"{data.batch_size} {noun}"
    ranks = _plural(str(sampler.world_size), "rank")
    trained = f" ({_approx(summary.trained)} trained tokens)" if tokens else ""
    return (
        f"batches: {micro} per micro-batch x {sampler.accumulate} accumulation x {ranks} = "
        f"{_approx(summary.examples)} {noun}{trained} per optimizer step, {summary.steps:,} optimizer steps per epoch"
    )


def _mean(values: list[int]) -> float:
    return sum(values) / len(values) if values else 0.0


def _approx(values: list[int]) -> str:
    """`N` when every value is N, else `~mean` (one decimal below 10)."""
    if values and min(values) == max(values):
        return f"{values[0]:,}"
    mean = _mean(values)
    return f"~{mean:.1f}" if mean < 10 else f"~{round(mean):,}"


def _plural(count: str, word: str) -> str:
    return f"{count} {word}{'' if count == '1' else 's'}"
