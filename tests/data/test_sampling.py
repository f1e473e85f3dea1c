import numpy as np
import pytest

from lightft.data.sampling import PlannedBatchSampler

LENGTHS = list(np.random.default_rng(0).integers(5, 200, size=103))
TRAINED = [n // 2 for n in LENGTHS]


def plan(**kwargs):
    defaults = dict(lengths=LENGTHS, trained=TRAINED, batch_size=2, accumulate=1, world_size=1, rank=0, seed=3)
    return PlannedBatchSampler(**{**defaults, **kwargs})


def steps_seen(batch_size, accumulate, world_size):
    """Per optimizer step: the set of items over all ranks, and the step token count each micro-batch carries."""
    per_rank = [
        list(plan(batch_size=batch_size, accumulate=accumulate, world_size=world_size, rank=r))
        for r in range(world_size)
    ]
    n = len(per_rank[0])
    assert all(len(batches) == n for batches in per_rank)  # no rank ever waits for another
    steps, i = [], 0
    while i < n:
        k = min(accumulate, n - i)
        micro = [b for batches in per_rank for b in batches[i : i + k]]
        steps.append((sorted(idx for b in micro for idx, _ in b), {t for b in micro for _, t in b}))
        i += k
    return steps


@pytest.mark.parametrize(
    ("batch_size", "accumulate", "world_size"), [(4, 1, 1), (1, 4, 1), (2, 2, 1), (2, 1, 2), (1, 2, 2)]
)
def test_same_global_batch_gives_the_same_steps(batch_size, accumulate, world_size):
    reference = steps_seen(4, 1, 1)
    got = steps_seen(batch_size, accumulate, world_size)
    assert [s for s, _ in got] == [s for s, _ in reference]
    for items, tokens in got:
        assert tokens == {sum(TRAINED[i] for i in items)}  # every micro-batch knows its whole step


def test_every_item_once_per_epoch_and_len_matches():
    sampler = plan(batch_size=3, accumulate=2, world_size=2, rank=1)
    assert len(list(sampler)) == len(sampler)
    seen = [i for r in range(2) for b in plan(batch_size=3, accumulate=2, world_size=2, rank=r) for i, _ in b]
    assert sorted(seen) == list(range(len(LENGTHS)))


def test_epochs_reshuffle_and_longest_step_comes_first():
    sampler = plan(batch_size=4)
    first = list(sampler)
    assert max(LENGTHS[i] for i, _ in first[0]) == max(LENGTHS)
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_length_grouping_reduces_padding():
    def padding(group):
        return sum(
            max(LENGTHS[i] for i, _ in b) * len(b) - sum(LENGTHS[i] for i, _ in b)
            for b in plan(batch_size=8, group_by_length=group)
        )

    assert padding(True) < padding(False) / 3


def test_too_few_items_for_every_rank_are_dropped():
    sampler = PlannedBatchSampler([3, 4, 5], [1, 1, 1], batch_size=1, world_size=2, rank=0, shuffle=False)
    assert len(sampler) == len(list(sampler)) == 1
