"""Random states in checkpoints: every rank's torch / CUDA / numpy / Python generators as plain data.

A resumed run draws the same dropout masks and samples as an uninterrupted one (`checkpoints.hooks` restores them
at train start), and validation during fit leaves the training's streams where they were.
"""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

RNG_KEY = "lightft_rng"  # per-rank random states in a checkpoint


def rng_state() -> dict[str, Any]:
    """This process's random states (torch, CUDA, numpy, Python: what Lightning's `seed_everything` seeds) as plain
    lists and numbers, so checkpoints holding them load with `weights_only=True`.
    """  # noqa: D205
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {
        "torch": torch.get_rng_state().tolist(),
        "torch.cuda": [s.tolist() for s in cuda],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    name, keys, pos, has_gauss, cached = state["numpy"]
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state["torch.cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["torch.cuda"]])
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def gather_rng_states(trainer: pl.Trainer) -> list[dict[str, Any]]:
    """Every rank's `rng_state()`, in rank order (a collective: all ranks call it)."""
    import torch.distributed as dist

    mine = rng_state()
    if trainer.world_size == 1 or not (dist.is_available() and dist.is_initialized()):
        return [mine]
    states: list[Any] = [None] * trainer.world_size
    dist.all_gather_object(states, mine)
    return states
