import numpy as np
import pytest

from lightft.data.sampling import PlannedBatchSampler, ResumableDataLoader
from lightft.errors import LightFTError

LENGTHS = list(np.random.default_rng(0).integers(5, 200, size=103))
TRAINED = [n // 2 for n in LENGTHS]


def plan(**kwargs):
    defaults = dict(lengths=LENGTHS, trained=TRAINED, batch_size=2, accumulate=1, world_size=1, rank=0, seed=3)
    return PlannedBatchSampler(**{**defaults, **kwargs})


def items(key):
    """The items of a key: an index, or a tuple of indices packed into one row."""
    return list(key) if isinstance(key, tuple) else [key]


def micro_batches(world_size, **kwargs):
    """Every rank's micro-batches of one epoch; all ranks get as many (no rank ever waits for another)."""
    per_rank = [list(plan(world_size=world_size, rank=r, **kwargs)) for r in range(world_size)]
    assert all(len(batches) == len(per_rank[0]) for batches in per_rank)
    assert all(batch for batches in per_rank for batch in batches)  # never an empty micro-batch
    return per_rank


def steps_seen(batch_size, accumulate, world_size, **kwargs):
    """Per optimizer step: the set of items over all ranks, and the step token count each micro-batch carries."""
    per_rank = micro_batches(world_size, batch_size=batch_size, accumulate=accumulate, **kwargs)
    n = len(per_rank[0])
    steps, i = [], 0
    while i < n:
        k = min(accumulate, n - i)
        micro = [b for batches in per_rank for b in batches[i : i + k]]
        steps.append(
            (sorted(idx for b in micro for key, _ in b for idx in items(key)), {t for b in micro for _, t in b})
        )
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


@pytest.mark.parametrize(
    ("batch_size", "accumulate", "world_size"), [(4, 1, 1), (2, 2, 1), (1, 4, 1), (2, 1, 2), (1, 2, 2), (3, 2, 2)]
)
def test_packing_by_step_takes_the_unpacked_steps(batch_size, accumulate, world_size):
    shape = dict(batch_size=batch_size, accumulate=accumulate, world_size=world_size)
    unpacked = steps_seen(**shape)
    packed = steps_seen(**shape, pack_length=256)
    assert len(packed) == len(unpacked)  # as many optimizer steps per epoch
    assert [s for s, _ in packed] == [s for s, _ in unpacked]  # the same examples in each step
    for items_, tokens in packed:
        assert tokens == {sum(TRAINED[i] for i in items_)}  # the normaliser: trained tokens of the whole step
    for batches in micro_batches(**shape, pack_length=256):
        assert all(isinstance(key, tuple) and sum(LENGTHS[i] for i in key) <= 256 for b in batches for key, _ in b)
        # a full step's micro-batch never holds more rows than batch_size (memory as unpacked, at most)
        assert all(len(b) <= batch_size for b in batches[: len(batches) // accumulate * accumulate])
    rows = sum(len(b) for batches in micro_batches(**shape, pack_length=256) for b in batches)
    # examples really are packed together, as far as a step's micro-batches allow (1 example each: no packing)
    assert rows < 0.75 * len(LENGTHS) if batch_size > 1 else rows >= len(LENGTHS) - world_size


def test_packing_by_step_resumes_mid_epoch_and_its_length_is_exact():
    sampler = plan(batch_size=2, accumulate=2, pack_length=256)
    full = list(sampler)
    assert len(full) == len(sampler) == len(plan(batch_size=2, accumulate=2))
    sampler.start = 5
    assert list(sampler) == full[5:]
    assert list(sampler) == full  # `start` holds for one pass only


def test_a_partial_last_step_gives_every_rank_a_non_empty_micro_batch():
    # 3 items, 2 ranks, 2 accumulated micro-batches of 1: once a micro-batch of rank 1 was empty
    for pack_length in (None, 256):
        kwargs = dict(lengths=[30, 40, 50], trained=[1, 1, 1], batch_size=1, accumulate=2, shuffle=False)
        per_rank = [list(PlannedBatchSampler(**kwargs, world_size=2, rank=r, pack_length=pack_length)) for r in (0, 1)]
        assert [len(b) for b in per_rank] == [1, 1] == [len(PlannedBatchSampler(**kwargs, world_size=2, rank=0))] * 2
        assert sorted(i for b in per_rank for (key, _) in b[0] for i in items(key)) == [0, 1, 2]


def test_a_token_budget_bounds_every_micro_batch_and_keeps_the_epoch_length():
    sampler = plan(batch_size=512, accumulate=2, world_size=1, unit="tokens")
    lengths = {len(list(sampler))}
    seen = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        lengths.add(len(batches))
        for batch in batches:
            assert len(batch) * max(LENGTHS[i] for i, _ in batch) <= 512  # padding included
        seen.append(sorted(i for b in batches for i, _ in b))
    assert lengths == {len(sampler)}  # Lightning reads the length once: every epoch must have it
    assert seen[0] == seen[1] == list(range(len(LENGTHS)))
    small = plan(batch_size=256, accumulate=2, world_size=1, unit="tokens")
    assert len(small) > len(sampler)  # a smaller budget, more steps


class Keys:
    """A dataset that returns its keys (the planner's output, unchanged)."""

    def __getitem__(self, key):
        return key


def loader(**kwargs):
    return ResumableDataLoader(Keys(), batch_sampler=plan(**kwargs), collate_fn=lambda batch: batch)


def test_packing_by_step_resumes_on_another_number_of_processes():
    two = dict(batch_size=2, accumulate=1, world_size=2, pack_length=256)
    first = loader(**two, rank=0)
    it = iter(first)
    for _ in range(3):
        next(it)
    state = first.state_dict()
    assert state["served"] == 3 and state["global_batch"] == 4
    one = loader(batch_size=2, accumulate=2, world_size=1, pack_length=256)
    one.load_state_dict(state)
    rest = list(one)
    straight = steps_seen(2, 2, 1, pack_length=256)
    assert [sorted(i for b in rest[k : k + 2] for key, _ in b for i in items(key)) for k in range(0, len(rest), 2)] == [
        s for s, _ in straight[3:]
    ]


def test_a_token_budget_run_resumes_only_on_its_own_shape():
    state = loader(batch_size=512, accumulate=1, world_size=2, rank=0, unit="tokens").state_dict()
    with pytest.raises(LightFTError, match="batch_size_unit: tokens"):
        loader(batch_size=512, accumulate=2, world_size=1, unit="tokens").load_state_dict(state)
