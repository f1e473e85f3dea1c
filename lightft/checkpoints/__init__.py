"""Checkpoints: written atomically and read back whatever strategy wrote them (`files`), the random states that
make a resume exact (`random_state`), hyper-parameters as plain data (`hparams`) and the module hooks that put all
of it in and take it out (`hooks`).
"""  # noqa: D205

from lightft.checkpoints.files import (
    WRAPPER_PREFIX,
    checkpoint_kind,
    read_checkpoint,
    recover_interrupted,
    run_checkpoint,
    save_atomically,
)
from lightft.checkpoints.random_state import RNG_KEY, gather_rng_states, rng_state, set_rng_state

__all__ = [
    "RNG_KEY",
    "WRAPPER_PREFIX",
    "checkpoint_kind",
    "gather_rng_states",
    "read_checkpoint",
    "recover_interrupted",
    "rng_state",
    "run_checkpoint",
    "save_atomically",
    "set_rng_state",
]
