import random

import numpy as np
import torch

from lightft.checkpoints.random_state import rng_state, set_rng_state


def draws():
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_a_saved_random_state_replays_every_generator():
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    draws()
    state = rng_state()
    expected = draws()
    draws()  # move every generator on
    set_rng_state(state)
    assert draws() == expected


def test_the_state_is_plain_data():
    """Checkpoints holding it load with `torch.load(weights_only=True)`."""

    def plain(value):
        if isinstance(value, (list, tuple)):
            return all(plain(v) for v in value)
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        return value is None or isinstance(value, (bool, int, float, str))

    assert plain(rng_state())
