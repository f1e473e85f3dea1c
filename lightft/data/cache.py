"""Encoded splits cached by content: the same bytes, reading options, tokenizer and encoding settings are encoded once.

`datasets` caches a `map` next to the arrow files of the dataset it read, which it keys by the data file's path and
modification time: a copied or touched file re-reads and re-encodes everything, and a moved one misses. lightft
keys encodings by a hash of the file's content instead (`DatasetSpec.digest`) plus the tokenizer and every encoding
setting, and keeps them under `$LIGHTFT_CACHE` (default: `<datasets cache>/lightft/encoded`), saved with
`Dataset.save_to_disk` and read back memory-mapped. A split cached here is encoded in memory (`build(True)`: maps
with `keep_in_memory`), so its encoding reaches the disk once, as the entry, not also as `datasets`' map cache. An
entry is written under a temporary name and renamed into place, so a crash never leaves a half entry and two
processes encoding the same split both end with a whole one. Hub datasets have no local bytes to hash: they keep
`datasets`' own cache (`build(False)`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets

META = "lightft.json"


def cache_root() -> Path:
    """Where encodings are kept: `$LIGHTFT_CACHE`, else `<datasets cache>/lightft/encoded`."""
    root = os.environ.get("LIGHTFT_CACHE")
    return Path(root) if root else Path(datasets.config.HF_DATASETS_CACHE) / "lightft" / "encoded"


def cached(
    key_parts: tuple[Any, ...] | None, build: Callable[[bool], tuple[datasets.Dataset, dict[str, Any]]]
) -> tuple[datasets.Dataset, dict[str, Any]]:
    """(encoded rows, metadata) for `key_parts` from the cache, or from `build(in_memory)` (then stored, and read
    back memory-mapped); None: no caching here, `build(False)` uses `datasets`' own cache.
    """  # noqa: D205
    if key_parts is None:
        return build(False)
    key = hashlib.sha256(repr(key_parts).encode()).hexdigest()[:40]
    entry = cache_root() / key
    if (entry / META).is_file():
        try:
            return datasets.load_from_disk(str(entry)), json.loads((entry / META).read_text())
        except Exception:  # an entry from another `datasets` version, or damaged: encode again
            shutil.rmtree(entry, ignore_errors=True)
    rows, meta = build(True)
    partial = entry.with_name(f".{key}.{uuid.uuid4().hex[:8]}")
    try:
        _quietly(lambda: rows.save_to_disk(str(partial)))  # storing is bookkeeping, not news for the user
        (partial / META).write_text(json.dumps(meta))
        partial.rename(entry)
    except OSError:  # another process stored it first, or the cache is not writable: use what we built
        shutil.rmtree(partial, ignore_errors=True)
    if (entry / META).is_file():  # memory-mapped: the rows built in memory are released
        return datasets.load_from_disk(str(entry)), meta
    return rows, meta


def _quietly(work: Callable[[], Any]) -> None:
    """Run `work` with `datasets`' progress bars off (as they were, after)."""
    shown = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        work()
    finally:
        if shown:
            datasets.enable_progress_bars()
