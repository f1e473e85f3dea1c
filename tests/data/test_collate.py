import pytest
import torch

from lightft.data.batches import TokenBatch
from lightft.data.collate import Collator, pack_lengths
from lightft.data.datasets import TokenDataset
from lightft.data.formats import Example
from lightft.data.templates import ExampleEncoder
from lightft.losses.sft import token_cross_entropy
from lightft.models.loading import ModelSpec, load_model


def test_pack_lengths_is_a_valid_best_fit_packing():
    lengths = [5, 9, 3, 7, 1, 10, 2, 8]
    packs = pack_lengths(lengths, 10)
    assert sorted(i for pack in packs for i in pack) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in pack) <= 10 for pack in packs)
    assert len(packs) == 5  # total 45 tokens: 5 bins of 10 is optimal here
    assert pack_lengths(lengths, 10) == packs  # deterministic


def rows(encoded):
    return {
        "input_ids": [e.input_ids for e in encoded],
        "labels": [e.labels for e in encoded],
        "length": [len(e.input_ids) for e in encoded],
        "n_trained": [e.n_trained for e in encoded],
    }


class Rows(list):
    """A list of row dicts that also answers column and list-of-index lookups like datasets.Dataset."""

    def __getitem__(self, key):
        if isinstance(key, str):
            return [row[key] for row in self]
        if isinstance(key, list):
            return {k: [list.__getitem__(self, i)[k] for i in key] for k in list.__getitem__(self, 0)}
        return list.__getitem__(self, key)


def make_rows(tokenizer, texts):
    encoder = ExampleEncoder(tokenizer, 128)
    encoded = [
        encoder.encode(Example([{"role": "user", "content": q}, {"role": "assistant", "content": a}], [1]))
        for q, a in texts
    ]
    columns = rows(encoded)
    return Rows([{k: columns[k][i] for k in columns} for i in range(len(encoded))])


TEXTS = [("Log this order: two lattes", "done"), ("hi", "a much longer answer with many words in it"), ("x", "y")]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_documents_have_exactly_their_unpacked_losses(tokenizer, attn):
    model = load_model(ModelSpec("tests/assets/tiny-llama", random_init=True, attn_implementation=attn), tokenizer)
    data = make_rows(tokenizer, TEXTS)
    collate = Collator(tokenizer.pad_token_id)
    alone = []
    for i in range(len(data)):
        batch = collate([TokenDataset(data)[i]])
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        alone.append(token_cross_entropy(logits, batch.labels))
    packed = TokenDataset(data, packs=[[0, 1, 2]])
    batch = collate(
        [
            packed[0],
            {
                **packed[0],
                "input_ids": packed[0]["input_ids"][:5],
                "labels": packed[0]["labels"][:5],
                "position_ids": packed[0]["position_ids"][:5],
            },
        ]
    )
    assert batch.packed and batch.attention_mask is None
    # use_cache=False as in SFTModule.forward: transformers only detects packed rows when no KV cache is built
    logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits[:1]
    start = 0
    for i, length in enumerate(data["length"]):
        span = slice(start, start + length)
        loss, n = token_cross_entropy(logits[:, span], batch.labels[:1, span])
        assert n == alone[i][1]
        torch.testing.assert_close(loss, alone[i][0], rtol=1e-5, atol=1e-5)
        start += length
    # and the whole packed row's loss is the sum of the documents' losses
    total, count = token_cross_entropy(logits, batch.labels[:1])
    torch.testing.assert_close(total, sum(a[0] for a in alone), rtol=1e-5, atol=1e-5)
    assert count == sum(a[1] for a in alone)


def test_without_position_resets_packing_would_leak(tokenizer):
    """Guards the test above: attending across documents does change the second document's loss."""
    model = load_model(ModelSpec("tests/assets/tiny-llama", random_init=True), tokenizer)
    data = make_rows(tokenizer, TEXTS[:2])
    item = TokenDataset(data, packs=[[0, 1]])[0]
    ids = torch.tensor([item["input_ids"]])
    leaky = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    exact = model(input_ids=ids, position_ids=torch.tensor([item["position_ids"]]), use_cache=False).logits
    second = slice(data["length"][0], None)
    assert not torch.allclose(leaky[:, second], exact[:, second], atol=1e-4)


def test_collator_pads_right_with_pad_not_eos(tokenizer):
    data = make_rows(tokenizer, TEXTS)
    batch = Collator(tokenizer.pad_token_id, pad_to_multiple_of=8)([TokenDataset(data)[i] for i in range(3)])
    assert isinstance(batch, TokenBatch) and not batch.packed and batch.position_ids is None
    assert batch.input_ids.shape[1] % 8 == 0
    lengths = batch.attention_mask.sum(1).tolist()
    assert lengths == data["length"]
    assert (batch.input_ids[0, lengths[0] :] == tokenizer.pad_token_id).all()
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert (batch.labels[batch.attention_mask == 0] == -100).all()
    assert batch.rows == [[0], [1], [2]] and batch.size == 3
    assert batch.normaliser is None  # not a planned batch
    assert batch.real_tokens() == sum(data["length"])


def test_packing_probe_accepts_sdpa_and_rejects_a_leaky_model(tokenizer):
    from lightft.errors import LightFTError
    from lightft.models.attention import check_packed_attention

    model = load_model(ModelSpec("tests/assets/tiny-llama", random_init=True), tokenizer)
    check_packed_attention(model, torch.device("cpu"))

    class IgnoresPositions(torch.nn.Module):  # attends across the whole row, like an implementation ignoring resets
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, input_ids, position_ids=None, use_cache=False):
            return self.inner(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=use_cache)

    with pytest.raises(LightFTError, match="packing: false"):
        check_packed_attention(IgnoresPositions(model), torch.device("cpu"))


def test_packed_batches_count_their_real_tokens(tokenizer):
    data = make_rows(tokenizer, TEXTS)
    packed = TokenDataset(data, packs=[[0, 1], [2]])
    batch = Collator(tokenizer.pad_token_id)([packed[0], packed[1]])
    assert batch.packed and batch.rows == [[0, 1], [2]] and batch.size == 2
    assert batch.real_tokens() == sum(data["length"]) < batch.input_ids.numel()


def test_a_planned_key_carries_the_steps_normaliser_into_the_batch(tokenizer):
    data = make_rows(tokenizer, TEXTS)
    dataset = TokenDataset(data)
    batch = Collator(tokenizer.pad_token_id)([dataset[(0, 17)], dataset[(2, 17)]])  # keys from PlannedBatchSampler
    assert batch.normaliser.dtype == torch.float32 and float(batch.normaliser) == 17.0
    assert batch.rows == [[0], [2]]
    packed = Collator(tokenizer.pad_token_id)([dataset[((0, 1), 5)]])  # a row the planner packed from examples 0, 1
    assert packed.packed and float(packed.normaliser) == 5.0 and packed.rows == [[0, 1]]
    assert packed.position_ids[0, : data["length"][0]].tolist() == list(range(data["length"][0]))
