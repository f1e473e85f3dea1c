"""Several sources in one split: `train: [{path: a.jsonl, weight: 2}, {path: b.jsonl, weight: 1}]`.

Each source is read and encoded on its own (its own format, column mapping and roles; cached by content), then an
epoch's examples are drawn from each and concatenated; the batch planner shuffles them like any split. A source
with `examples: N` gives exactly N; the weighted sources share the size they have together (the sum of their
sizes), each `weight / sum of weights` of it (largest remainders, so the counts add up exactly); without any
weight or count, every example of every source once. A source drawn fewer times than it has examples gives a
seeded random subset without repeats; more, every example `N // size` times plus a seeded subset of the rest. The
draws depend only on the seed and the sources, so every rank and a resumed run see the same mixture, and the
planner's exact mid-epoch resume holds for it as for a single file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np

from lightft.data.sources import DatasetSpec
from lightft.errors import LightFTError


@dataclass(frozen=True)
class Mixture:
    """The sources of one split and the seed of their draws.

    Args:
        sources: The split's sources, each a `DatasetSpec` with an optional `weight` or `examples`.
        seed: Seed of the draws (the data module's `seed`).
        key: The config key of the split (`data.init_args.train`), for error messages.
    """

    sources: tuple[DatasetSpec, ...]
    seed: int = 42
    key: str = "data.init_args.train"

    def __post_init__(self) -> None:
        if not self.sources:
            raise LightFTError(f"{self.key}: an empty list of sources; give at least one file.")
        weighted = [s.weight is not None for s in self.sources if s.examples is None]
        for i, source in enumerate(self.sources):
            at = f"{self.key}[{i}]"
            if source.weight is not None and source.examples is not None:
                raise LightFTError(f"{at}: give weight or examples, not both.")
            if source.weight is not None and not source.weight > 0:
                raise LightFTError(f"{at}.weight: {source.weight} must be > 0; drop the source or raise its weight.")
            if source.examples is not None and source.examples < 1:
                raise LightFTError(f"{at}.examples: {source.examples} must be >= 1; drop the source instead.")
        if any(weighted) and not all(weighted):
            raise LightFTError(
                f"{self.key}: some sources have a weight and others neither a weight nor examples; give each source "
                "a weight (its share) or examples (a count)."
            )

    @property
    def path(self) -> str:
        """The sources' paths, for log lines."""
        return " + ".join(s.path for s in self.sources)

    def counts(self, sizes: Sequence[int]) -> list[int]:
        """Examples drawn from each source per epoch, given each source's size."""
        counts = [s.examples or 0 for s in self.sources]
        weighted = [i for i, s in enumerate(self.sources) if s.examples is None]
        if not weighted:
            return counts
        if all(self.sources[i].weight is None for i in weighted):  # no weights: every example once
            for i in weighted:
                counts[i] = sizes[i]
            return counts
        total = sum(sizes[i] for i in weighted)
        weight_sum = sum(self.sources[i].weight or 0.0 for i in weighted)
        exact = {i: total * (self.sources[i].weight or 0.0) / weight_sum for i in weighted}
        for i in weighted:
            counts[i] = int(exact[i])
        left = total - sum(counts[i] for i in weighted)
        for i in sorted(weighted, key=lambda i: (-(exact[i] - int(exact[i])), i))[:left]:
            counts[i] += 1
        return counts

    def draws(self, sizes: Sequence[int]) -> list[np.ndarray]:
        """The row indices drawn from each source (seeded by the seed and the source's position and path)."""
        out = []
        for i, (size, count) in enumerate(zip(sizes, self.counts(sizes), strict=True)):
            name = f"{self.seed}:{i}:{self.sources[i].path}".encode()
            rng = np.random.default_rng(int.from_bytes(hashlib.sha256(name).digest()[:8], "little"))
            whole, rest = divmod(count, size) if size else (0, 0)
            out.append(np.concatenate([np.tile(np.arange(size), whole), rng.permutation(size)[:rest]]).astype(int))
        return out


def encode_mixture(
    mixture: Mixture,
    encode: Callable[[DatasetSpec, str], tuple[datasets.Dataset, Any]],
    kind: Callable[[Any], str] | None = None,
) -> tuple[datasets.Dataset, list[Any], str]:
    """(the drawn examples of every source concatenated, each source's `encode` extras, a one-line description).

    `encode(spec, key)` encodes one source into rows (plus whatever else it returns, e.g. its statistics); `kind`
    names the kind of rows from those extras (e.g. paired or unpaired preferences). Sources must give rows of one
    kind (the same columns; a loss-weight or margin column missing from some is filled in).
    """
    parts, extras = [], []
    for i, source in enumerate(mixture.sources):
        rows, extra = encode(source, f"{mixture.key}[{i}]")
        if kind is not None and extras and kind(extra) != kind(extras[0]):
            raise LightFTError(
                f"{mixture.key}[{i}] ({source.path}): {kind(extra)} rows mixed with {mixture.key}[0]'s "
                f"{kind(extras[0])} rows; mix sources of one kind."
            )
        parts.append(rows)
        extras.append(extra)
    parts = _same_columns(parts, mixture)
    sizes = [len(rows) for rows in parts]
    draws = mixture.draws(sizes)
    mixed = datasets.concatenate_datasets([rows.select(idx) for rows, idx in zip(parts, draws, strict=True)])
    shares = ", ".join(
        f"{s.path} {len(d)} drawn from {n}" for s, d, n in zip(mixture.sources, draws, sizes, strict=True)
    )
    return mixed, extras, f"mixture of {len(parts)}: {shares}"


def _same_columns(parts: list[datasets.Dataset], mixture: Mixture) -> list[datasets.Dataset]:
    """Every part with the same columns and types: a loss-weight or margin column some lack is filled in."""
    fillers: dict[str, Any] = {"weights": [], "margin": 0.0}  # all-1 loss weights; no required reward gap
    base = set(parts[0].column_names) - set(fillers)
    for i, rows in enumerate(parts[1:], start=1):
        differ = sorted(base ^ (set(rows.column_names) - set(fillers)))
        if differ:
            raise LightFTError(
                f"{mixture.key}[{i}] ({mixture.sources[i].path}): another kind of data than {mixture.key}[0]'s "
                f"(columns {differ} differ); mix sources of one kind: SFT examples, preference pairs, or unpaired "
                "(KTO) rows."
            )
    features: dict[str, Any] = {}
    for rows in parts:
        for name, feature in rows.features.items():
            features.setdefault(name, feature)
    order = datasets.Features(
        {name: features[name] for name in parts[0].column_names + sorted(set(features) - set(parts[0].column_names))}
    )
    out = []
    for rows in parts:
        for name in order:
            if name not in rows.column_names:
                rows = rows.add_column(name, [fillers[name]] * len(rows))
        out.append(rows.select_columns(list(order)).cast(order))
    return out
