"""The typed batches: frozen, moved whole to a device (by `.to` and by Lightning), pinned, viewed as plain data."""

from __future__ import annotations

import dataclasses
import json
import pickle
from copy import deepcopy

import pytest
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.plugins.precision import DeepSpeedPrecision, FSDPPrecision, HalfPrecision
from torch.utils.data import DataLoader

from lightft.data.batches import Batch, PairBatch, PromptBatch, TokenBatch, UnpairedBatch


def token_batch(**extra) -> TokenBatch:
    ids = torch.tensor([[5, 6, 7], [8, 9, 0]])
    return TokenBatch(input_ids=ids, labels=torch.tensor([[-100, 6, 7], [-100, 9, -100]]),
                      attention_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]), rows=[[0], [3]], **extra)  # fmt: skip


def pair_batch() -> PairBatch:
    base = token_batch(normaliser=torch.tensor(4.0))
    return PairBatch(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)}, index=torch.tensor([7]),
                     margin=torch.tensor([0.5]))  # fmt: skip


def prompt_batch() -> PromptBatch:
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    return PromptBatch(input_ids=torch.tensor([[0, 1, 2], [3, 4, 5]]), attention_mask=mask, index=torch.tensor([1, 0]),
                       references=["two", ""])  # fmt: skip


def unpaired_batch() -> UnpairedBatch:
    return UnpairedBatch(input_ids=torch.ones(4, 2, dtype=torch.long), labels=torch.ones(4, 2, dtype=torch.long),
                         attention_mask=torch.ones(4, 2, dtype=torch.long), index=torch.tensor([2, 5]),
                         desirable=torch.tensor([True, False]))  # fmt: skip


ALL = [token_batch, pair_batch, prompt_batch, unpaired_batch]


def tensors(batch: Batch) -> dict[str, torch.Tensor]:
    return {f.name: v for f in dataclasses.fields(batch) if isinstance(v := getattr(batch, f.name), torch.Tensor)}


@pytest.mark.parametrize("make", ALL, ids=lambda make: make.__name__)
def test_batches_are_frozen(make):
    batch = make()
    with pytest.raises(dataclasses.FrozenInstanceError):
        batch.input_ids = torch.zeros(1)


@pytest.mark.parametrize("make", ALL, ids=lambda make: make.__name__)
def test_to_moves_every_tensor_and_keeps_the_rest(make):
    batch = make()
    moved = batch.to("meta")  # a device every machine has; the copy is a new batch, the original stays
    assert type(moved) is type(batch) and tensors(moved).keys() == tensors(batch).keys()
    assert all(t.device.type == "meta" for t in tensors(moved).values())
    assert all(t.device.type == "cpu" for t in tensors(batch).values())
    for f in dataclasses.fields(batch):
        if not isinstance(getattr(batch, f.name), torch.Tensor):
            assert getattr(moved, f.name) == getattr(batch, f.name), f.name  # lists and None as they were
    assert moved.size == batch.size


@pytest.mark.parametrize("make", ALL, ids=lambda make: make.__name__)
def test_lightning_moves_a_batch_with_its_to(make):
    moved = move_data_to_device(make(), torch.device("meta"))
    assert type(moved) is type(make()) and all(t.device.type == "meta" for t in tensors(moved).values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs an accelerator")
@pytest.mark.parametrize("make", ALL, ids=lambda make: make.__name__)
def test_pin_memory_pins_every_tensor_and_a_dataloader_keeps_the_type(make):
    pinned = make().pin_memory()
    assert all(t.is_pinned() for t in tensors(pinned).values())
    loader = DataLoader([0], batch_size=1, collate_fn=lambda _: make(), pin_memory=True)
    batch = next(iter(loader))
    assert type(batch) is type(make()) and all(t.is_pinned() for t in tensors(batch).values())
    on_gpu = batch.to("cuda")
    assert all(t.is_cuda for t in tensors(on_gpu).values())
    torch.testing.assert_close(on_gpu.input_ids.cpu(), batch.input_ids)


def test_plain_is_json_data_without_the_unset_fields():
    plain = pair_batch().plain()
    assert json.loads(json.dumps(plain)) == plain
    assert plain["input_ids"] == [[5, 6, 7], [8, 9, 0]] and plain["rows"] == [[0], [3]]
    assert plain["index"] == [7] and plain["margin"] == [0.5] and plain["normaliser"] == 4.0
    assert "position_ids" not in plain and "n_tokens" not in plain
    assert prompt_batch().plain()["references"] == ["two", ""]


def test_size_counts_examples_not_rows():
    assert token_batch().size == 2
    assert pair_batch().size == 1  # one pair: a chosen and a rejected row
    assert unpaired_batch().size == 2  # two examples, each with its mismatched KL row
    assert prompt_batch().size == 2


def test_real_tokens_and_packed():
    assert token_batch().real_tokens() == 5 and not token_batch().packed
    packed = TokenBatch(input_ids=torch.zeros(2, 4, dtype=torch.long), labels=torch.zeros(2, 4, dtype=torch.long),
                        position_ids=torch.tensor([[0, 1, 0, 0], [0, 1, 2, 0]]), n_tokens=torch.tensor(6))  # fmt: skip
    assert packed.packed and packed.real_tokens() == 6
    assert prompt_batch().real_tokens() == 5


def test_batches_survive_pickling_for_dataloader_workers():
    batch = pair_batch()
    copy = pickle.loads(pickle.dumps(batch))
    assert type(copy) is PairBatch and copy.plain() == batch.plain()


def test_each_batch_type_says_what_it_holds():
    whats = {cls.what for cls in (Batch, TokenBatch, PairBatch, UnpairedBatch, PromptBatch)}
    assert len(whats) == 5 and "what" not in {f.name for f in dataclasses.fields(PairBatch)}


@pytest.mark.parametrize("make", ALL, ids=lambda make: make.__name__)
def test_deepcopy_copies_every_tensor_and_stays_frozen(make):
    batch = make()
    copy = deepcopy(batch)
    assert type(copy) is type(batch) and copy.plain() == batch.plain()
    assert all(copy_t is not t for copy_t, t in zip(tensors(copy).values(), tensors(batch).values(), strict=True))
    with pytest.raises(dataclasses.FrozenInstanceError):
        copy.input_ids = torch.zeros(1)


PRECISIONS = {
    "bf16-true": lambda: HalfPrecision("bf16-true"),
    "16-true": lambda: HalfPrecision("16-true"),
    "deepspeed-bf16-mixed": lambda: DeepSpeedPrecision("bf16-mixed"),
    "fsdp-bf16-mixed": lambda: FSDPPrecision("bf16-mixed"),
}


@pytest.mark.parametrize("precision", sorted(PRECISIONS))
@pytest.mark.parametrize("make", ALL, ids=lambda make: make.__name__)
def test_lightnings_precision_casts_leave_a_batch_as_it_is(make, precision):
    """DeepSpeed, FSDP and `*-true` precision cast every floating tensor of an input (Lightning rebuilds dataclasses
    field by field): a batch comes out unchanged and still frozen, and the normaliser is not rounded to bf16."""
    batch = make()
    if isinstance(batch, TokenBatch):
        batch = dataclasses.replace(batch, normaliser=torch.tensor(1234.0))  # bf16 would make it 1232
    converted = PRECISIONS[precision]().convert_input(batch)
    assert type(converted) is type(batch) and converted.plain() == batch.plain()
    assert all(t.dtype == tensors(batch)[name].dtype for name, t in tensors(converted).items())
    with pytest.raises(dataclasses.FrozenInstanceError):
        converted.input_ids = torch.zeros(1)
    assert "_pending" not in vars(converted)
