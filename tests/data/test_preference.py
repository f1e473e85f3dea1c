"""Preference, implicit-prompt, unpaired (KTO) and prompt-only data: formats, encoding, collators, errors."""

import pytest
import torch

from lightft import PreferenceDataModule, PromptDataModule
from lightft.data.batches import PairBatch, PromptBatch, UnpairedBatch
from lightft.data.collate import PairCollator, UnpairedCollator
from lightft.data.formats import detect_format, split_implicit_prompt, to_unpaired
from lightft.data.preference import PREFERENCE_FORMATS, encode_preferences
from lightft.data.sources import DatasetSpec
from lightft.data.templates import IGNORE_INDEX
from lightft.errors import LightFTError
from tests.conftest import chat, write_jsonl


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        (["prompt", "chosen", "rejected"], "preference"),
        (["chosen", "rejected"], "implicit_preference"),
        (["prompt", "completion", "label"], "unpaired_preference"),
        (["prompt"], "prompt_only"),
    ],
)
def test_detect_preference_formats(columns, expected):
    assert detect_format(columns, "f", (*PREFERENCE_FORMATS, "prompt_only")) == expected


def test_implicit_prompt_of_conversations_is_the_shared_leading_messages():
    chosen = [user("Hi"), assistant("Hello!"), user("Order two lattes"), assistant('{"qty": 2}')]
    rejected = [user("Hi"), assistant("Hello!"), user("Order two lattes"), assistant("Sure thing.")]
    prompt, c, r = split_implicit_prompt(chosen, rejected, "w")
    assert prompt == chosen[:3] and c == [assistant('{"qty": 2}')] and r == [assistant("Sure thing.")]


def test_implicit_prompt_of_plain_text_cuts_at_a_word_start():
    prompt, c, r = split_implicit_prompt("Q: colour of sky? A: blue", "Q: colour of sky? A: bleak", "w")
    assert prompt == "Q: colour of sky? A: " and c == "blue" and r == "bleak"


@pytest.mark.parametrize(
    ("chosen", "rejected", "match"),
    [
        ("abc", "xyz", "share no prompt text"),
        ("same text", "same text plus more", "share no prompt text"),
        ([user("a"), assistant("b")], [user("c"), assistant("d")], "must share leading messages"),
        ("text", [user("a")], "both be strings or both be lists"),
    ],
)
def test_implicit_prompt_errors_say_to_give_a_prompt(chosen, rejected, match):
    with pytest.raises(LightFTError, match=match):
        split_implicit_prompt(chosen, rejected, "train.jsonl:3")


def test_unpaired_label_must_be_a_boolean():
    with pytest.raises(LightFTError, match=r"train.jsonl:5: field 'label' must be true .* got 'yes'"):
        to_unpaired({"prompt": "p", "completion": "c", "label": "yes"}, "train.jsonl:5")


def pair_rows():
    return [
        {"prompt": [user("Log two lattes")], "chosen": [assistant('{"qty": 2}')], "rejected": [assistant("no")],
         "margin": 1.5},
        {"prompt": [user("Log one mocha")], "chosen": [assistant('{"qty": 1}')], "rejected": [assistant("hmm ok")],
         "margin": 0.5},
    ]  # fmt: skip


def test_pairs_train_only_on_their_completions_and_keep_the_margin(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "pairs.jsonl", pair_rows())
    encoded, stats, paired = encode_preferences(DatasetSpec(str(path)), "data.train", tokenizer, 64, "right")
    assert paired and len(encoded) == 2 and encoded["margin"] == [1.5, 0.5]
    row = encoded[0]
    for side, text in (("chosen", '{"qty": 2}'), ("rejected", "no")):
        ids, labels = row[f"{side}_ids"], row[f"{side}_labels"]
        trained = [i for i, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
        assert text in tokenizer.decode(trained)
        assert "Log two lattes" not in tokenizer.decode(trained)
        prompt_end = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
        assert "Log two lattes" in tokenizer.decode(ids[:prompt_end])
    # both sides share the prompt tokens
    cut = next(i for i, label in enumerate(row["chosen_labels"]) if label != IGNORE_INDEX)
    assert row["chosen_ids"][:cut] == row["rejected_ids"][:cut]
    assert row["length"] == len(row["chosen_ids"]) + len(row["rejected_ids"])


def test_pairs_whose_side_is_truncated_away_are_dropped_and_counted(tmp_path, tokenizer):
    rows = pair_rows()
    rows[1]["prompt"] = [user("word " * 200)]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    encoded, stats, _ = encode_preferences(DatasetSpec(str(path)), "data.train", tokenizer, 64, "right")
    assert len(encoded) == 1 and (stats.rows, stats.kept, stats.zero_trained) == (2, 1, 1)
    assert stats.first_zero.endswith("pairs.jsonl:2")


def test_pair_collator_puts_chosen_rows_first_in_one_batch():
    items = [
        {"chosen_ids": [1, 2, 3], "chosen_labels": [-100, 2, 3], "rejected_ids": [1, 4], "rejected_labels": [-100, 4],
         "margin": 1.0, "index": 7, "trained": 1},
        {"chosen_ids": [5, 6], "chosen_labels": [-100, 6], "rejected_ids": [5, 8, 9, 9], "rejected_labels":
         [-100, 8, 9, 9], "margin": 2.0, "index": 3, "trained": 1},
    ]  # fmt: skip
    batch = PairCollator(pad_id=0)(items)
    assert isinstance(batch, PairBatch) and batch.size == 2 and batch.normaliser is None
    assert batch.input_ids.tolist() == [[1, 2, 3, 0], [5, 6, 0, 0], [1, 4, 0, 0], [5, 8, 9, 9]]
    assert batch.labels[1].tolist() == [-100, 6, -100, -100]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    assert batch.margin.tolist() == [1.0, 2.0] and batch.index.tolist() == [7, 3]
    without = PairCollator(pad_id=0)([{k: v for k, v in item.items() if k != "margin"} for item in items])
    assert without.margin is None and torch.equal(without.input_ids, batch.input_ids)


def test_unpaired_collator_adds_mismatched_rows_for_the_kl_estimate():
    items = [
        {"input_ids": [1, 2, 10, 11], "labels": [-100, -100, 10, 11], "desirable": True, "index": 0, "trained": 1},
        {"input_ids": [3, 20], "labels": [-100, 20], "desirable": False, "index": 1, "trained": 1},
    ]
    batch = UnpairedCollator(pad_id=0)(items)
    assert isinstance(batch, UnpairedBatch) and batch.size == 2 and len(batch.input_ids) == 4
    assert batch.desirable.tolist() == [True, False] and batch.index.tolist() == [0, 1]
    # row 2: prompt 0 + completion 1; row 3: prompt 1 + completion 0
    assert batch.input_ids[2].tolist() == [1, 2, 20, 0]
    assert batch.labels[2].tolist() == [-100, -100, 20, -100]
    assert batch.input_ids[3].tolist() == [3, 10, 11, 0]
    assert batch.labels[3].tolist() == [-100, 10, 11, -100]


def test_kto_datamodule_batches_examples_and_mismatched_rows(tmp_path, tiny_spec):
    rows = [{"prompt": f"Item {i}?", "completion": f" answer {i}", "label": i % 2 == 0} for i in range(8)]
    data = PreferenceDataModule(train=str(write_jsonl(tmp_path / "kto.jsonl", rows)), tokenizer=tiny_spec,
                                max_length=32, batch_size=4)  # fmt: skip
    assert data.batch_type() is UnpairedBatch  # read from the file before anything is encoded
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert isinstance(batch, UnpairedBatch) and data.batch_type() is UnpairedBatch
    assert batch.input_ids.shape[0] == 8 and batch.desirable.shape == (4,)
    assert float(batch.normaliser) == 4  # the planner's count of examples in the optimizer step


def test_pair_datamodule_batches_say_they_are_pairs(tmp_path, tiny_spec):
    data = PreferenceDataModule(train=str(write_jsonl(tmp_path / "pairs.jsonl", pair_rows())), tokenizer=tiny_spec,
                                max_length=64, batch_size=2)  # fmt: skip
    assert data.batch_type() is PairBatch
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert isinstance(batch, PairBatch) and batch.size == 2 and len(batch.input_ids) == 4
    assert sorted(batch.margin.tolist()) == [0.5, 1.5] and float(batch.normaliser) == 2


def test_a_preference_datamodule_without_data_says_so(tiny_spec):
    with pytest.raises(LightFTError, match=r"^data\.init_args\.train: no preference data configured"):
        PreferenceDataModule(tokenizer=tiny_spec).batch_type()


def test_paired_and_unpaired_splits_cannot_be_mixed(tmp_path, tiny_spec):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", pair_rows())
    kto = write_jsonl(tmp_path / "kto.jsonl", [{"prompt": "p", "completion": " c", "label": True}] * 4)
    data = PreferenceDataModule(train=str(pairs), val=str(kto), tokenizer=tiny_spec, max_length=64, batch_size=1)
    with pytest.raises(LightFTError, match=r"data.init_args.val .*mixes paired and unpaired"):
        data.setup("fit")


def test_sft_data_is_refused_by_the_preference_datamodule(tmp_path, tiny_spec):
    path = write_jsonl(tmp_path / "sft.jsonl", [chat("a", "b")] * 4)
    data = PreferenceDataModule(train=str(path), tokenizer=tiny_spec, max_length=64, batch_size=1)
    with pytest.raises(LightFTError, match=r"data.init_args.train .*sft.jsonl"):
        data.setup("fit")


def test_prompt_datamodule_left_pads_prompts_and_carries_references(tmp_path, tiny_spec, tokenizer):
    rows = [chat("Log two lattes please", '{"qty": 2}'), {"prompt": "hi", "completion": "yo"}]
    write_jsonl(tmp_path / "a.jsonl", rows[:1])
    write_jsonl(tmp_path / "b.jsonl", [{"prompt": "hi"}, {"prompt": "a rather longer prompt than that"}])
    data = PromptDataModule(train=str(tmp_path / "a.jsonl"), tokenizer=tiny_spec, batch_size=2)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert isinstance(batch, PromptBatch) and data.batch_type() is PromptBatch
    assert batch.references == ['{"qty": 2}']
    assert "Log two lattes" in tokenizer.decode(batch.input_ids[0])
    data = PromptDataModule(train=str(tmp_path / "b.jsonl"), tokenizer=tiny_spec, batch_size=2, seed=0)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    mask = batch.attention_mask
    assert mask[:, -1].tolist() == [1, 1]  # every prompt ends at the last column, where generation starts
    short = int(mask.sum(1).argmin())
    assert mask[short, 0] == 0 and (batch.input_ids[short][mask[short] == 0] == tokenizer.pad_token_id).all()
    assert batch.references == ["", ""]
    assert torch.equal(batch.index.sort().values, torch.tensor([0, 1]))
    assert batch.real_tokens() == int(mask.sum()) < batch.input_ids.numel()


def test_ordered_dataloader_gives_every_rank_as_many_batches(tmp_path, tiny_spec):
    rows = pair_rows() * 3  # 6 pairs, 3 ranks hold 2 each; 5 pairs leave the last rank 1
    path = write_jsonl(tmp_path / "pairs.jsonl", rows[:5])
    data = PreferenceDataModule(train=str(path), tokenizer=tiny_spec, max_length=64, batch_size=1)
    data.setup("fit")
    seen = []
    for rank in range(3):
        batches = list(data.ordered_dataloader("train", rank, 3))
        assert len(batches) == 2, rank  # ceil(ceil(5 / 3) / 1)
        seen += [int(i) for b in batches for i in b.index if i % 3 == rank]
    assert sorted(set(seen)) == list(range(5))
