"""Datasets as users download them (samples in tests/assets/shapes/): every shape's ids are exactly the chat
template's own rendering and exactly the assistant text (+ end of turn) trains; tool results never train; marks and
weights; preference rows with repeated prompts and scores; column mappings of nested QA sets; mixtures drawn in
their ratios; encodings cached by content.
"""

import json
import shutil

import datasets
import pytest
import torch

from lightft.data.collate import Collator
from lightft.data.datasets import TokenDataset
from lightft.data.formats import to_example
from lightft.data.mixture import Mixture
from lightft.data.pipeline import encode_split
from lightft.data.preference import encode_preferences
from lightft.data.sources import DatasetSpec
from lightft.errors import LightFTError
from lightft.losses.sft import IGNORE_INDEX
from lightft.models.loading import ModelSpec, load_tokenizer
from tests.conftest import ROOT, TINY, write_jsonl

SHAPES = ROOT / "tests" / "assets" / "shapes"
ROLES = {"customer": "user", "barista": "assistant"}


@pytest.fixture(scope="module")
def tok():
    """The tiny tokenizer with the ChatML template that renders tools (lightft's `chatml-tools`)."""
    return load_tokenizer(ModelSpec(str(TINY), chat_template="chatml-tools"))


def rows(name):
    return [json.loads(line) for line in (SHAPES / name).read_text().splitlines()]


def template_ids(tok, messages, tools=None):
    text = tok.apply_chat_template(messages, tools=tools, tokenize=False)
    return tok(text, add_special_tokens=False).input_ids


def trained_text(tok, ids, labels):
    return tok.decode([t for t, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX])


def test_sharegpt_is_the_template_of_its_turns_and_trains_the_gpt_turns(tok):
    encoded, stats = encode_split(DatasetSpec(str(SHAPES / "sharegpt.jsonl")), "data.train", tok, 512, "right")
    assert stats.kept == 16 and stats.truncated == 0
    names = {"human": "user", "gpt": "assistant", "system": "system"}
    for row, enc in zip(rows("sharegpt.jsonl"), encoded, strict=True):
        messages = [{"role": names[t["from"]], "content": t["value"]} for t in row["conversations"]]
        assert enc["input_ids"] == template_ids(tok, messages)
        want = "".join(m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant")
        assert trained_text(tok, enc["input_ids"], enc["labels"]) == want


def test_train_on_last_assistant_trains_only_the_last_turn(tok):
    spec = DatasetSpec(str(SHAPES / "sharegpt.jsonl"), train_on="last_assistant")
    encoded, _ = encode_split(spec, "data.train", tok, 512, "right")
    two_turns = [(r, e) for r, e in zip(rows("sharegpt.jsonl"), encoded, strict=True) if len(r["conversations"]) > 3]
    assert two_turns
    for row, enc in two_turns:
        assert trained_text(tok, enc["input_ids"], enc["labels"]) == row["conversations"][-1]["value"] + "<|im_end|>"


def test_a_roles_mapping_reads_other_role_names_and_an_unmapped_role_is_named(tok):
    spec = DatasetSpec(str(SHAPES / "sharegpt_roles.jsonl"), roles=ROLES)
    encoded, _ = encode_split(spec, "data.train", tok, 512, "right")
    first = rows("sharegpt_roles.jsonl")[0]["conversations"]
    messages = [{"role": ROLES[t["from"]], "content": t["value"]} for t in first]
    assert encoded[0]["input_ids"] == template_ids(tok, messages)
    with pytest.raises(LightFTError, match=r"sharegpt_roles.jsonl:1: conversations\[0\] has role 'customer'.*"
                                           r"roles: \{customer: user\|assistant\|system\|tool\}"):  # fmt: skip
        encode_split(DatasetSpec(str(SHAPES / "sharegpt_roles.jsonl")), "data.train", tok, 512, "right")


def test_tool_calls_train_and_tool_results_do_not(tok):
    encoded, stats = encode_split(DatasetSpec(str(SHAPES / "tools.jsonl")), "data.train", tok, 2048, "right")
    assert stats.truncated == 0
    for row, enc in zip(rows("tools.jsonl"), encoded, strict=True):
        messages = [dict(m) for m in row["messages"]]
        call = messages[1]["tool_calls"][0]["function"]
        call["arguments"] = json.loads(call["arguments"])  # what the template renders: the arguments object
        assert enc["input_ids"] == template_ids(tok, messages, row["tools"])
        answer = messages[3]["content"]
        want = f'<tool_call>\n{{"name": "find_store", "arguments": {json.dumps(call["arguments"])}}}\n</tool_call>'
        assert trained_text(tok, enc["input_ids"], enc["labels"]) == f"{want}<|im_end|>{answer}<|im_end|>"
        assert "tool_response" in tok.decode(enc["input_ids"])  # rendered, never trained


def test_a_tool_call_that_is_not_json_names_the_row_and_message(tmp_path, tok):
    bad = rows("tools.jsonl")[:2]
    bad[1]["messages"][1]["tool_calls"][0]["function"]["arguments"] = '{"store": "Oak"'
    path = write_jsonl(tmp_path / "tools.jsonl", bad)
    with pytest.raises(LightFTError, match=r"tools.jsonl:2: messages\[1\].tool_calls\[0\].arguments is not valid JSON"):
        encode_split(DatasetSpec(str(path)), "data.train", tok, 2048, "right")


def test_train_false_and_weights_choose_what_trains_and_how_much(tok):
    encoded, _ = encode_split(DatasetSpec(str(SHAPES / "marked.jsonl")), "data.train", tok, 512, "right")
    for row, enc in zip(rows("marked.jsonl"), encoded, strict=True):
        record = row["messages"][3]["content"]
        assert trained_text(tok, enc["input_ids"], enc["labels"]) == record + "<|im_end|>"  # turn 1: train false
        trained = [w for w, label in zip(enc["weights"], enc["labels"], strict=True) if label != IGNORE_INDEX]
        assert trained and set(trained) == {2.0}


def test_per_token_weights_scale_the_sft_loss(tok, tiny_model):
    """The loss of a batch whose trained tokens all weigh 2 is twice the unweighted loss (packed and not)."""
    from lightft.modules.sft import SFTModule

    encoded, _ = encode_split(DatasetSpec(str(SHAPES / "marked.jsonl")), "data.train", tok, 512, "right")
    collate = Collator(tok.pad_token_id)
    for dataset in (TokenDataset(encoded), TokenDataset(encoded, packs=[[0, 1, 2], [3]])):
        batch = collate([dataset[0], dataset[1]])
        plain = collate([{k: v for k, v in dataset[i].items() if k != "weights"} for i in (0, 1)])
        assert batch.weights is not None and plain.weights is None
        weighted, n = SFTModule.token_loss(_FullLogits(tiny_model), batch)
        unweighted, m = SFTModule.token_loss(_FullLogits(tiny_model), plain)
        assert n == m and weighted.item() == pytest.approx(2 * unweighted.item(), rel=1e-6)


class _FullLogits:
    """What `SFTModule.token_loss` uses of its module: `model` and `lm_logps` (here over the full logits)."""

    def __init__(self, model):
        self.model = model

    def lm_logps(self, model, batch):
        from types import SimpleNamespace

        from lightft.losses.logprobs import logits_logprobs

        kwargs = {"attention_mask": batch.attention_mask, "position_ids": batch.position_ids}
        with torch.no_grad():
            logits = model(input_ids=batch.input_ids, **kwargs).logits
        return SimpleNamespace(logps=logits_logprobs(logits, batch.labels))


def test_ultrafeedback_rows_give_the_prompt_once_and_score_margins(tok):
    spec = DatasetSpec(str(SHAPES / "ultrafeedback.jsonl"), margin="scores")
    encoded, stats, paired = encode_preferences(spec, "data.train", tok, 256, "right")
    assert paired and stats.kept == 12
    for row, enc in zip(rows("ultrafeedback.jsonl"), encoded, strict=True):
        assert enc["chosen_ids"] == template_ids(tok, row["chosen"])  # the user turn once, not twice
        assert enc["rejected_ids"] == template_ids(tok, row["rejected"])
        assert trained_text(tok, enc["chosen_ids"], enc["chosen_labels"]) == row["chosen"][1]["content"] + "<|im_end|>"
        assert enc["margin"] == row["score_chosen"] - row["score_rejected"]
    without, _, _ = encode_preferences(DatasetSpec(spec.path), "data.train", tok, 256, "right")
    assert "margin" not in without.column_names
    with pytest.raises(LightFTError, match=r"data.train.margin: scores needs the columns score_chosen"):
        encode_preferences(DatasetSpec(str(SHAPES / "hh_rlhf.jsonl"), margin="scores"), "data.train", tok, 256, "right")


def test_hh_rlhf_transcripts_find_their_shared_prompt(tok):
    encoded, _, paired = encode_preferences(DatasetSpec(str(SHAPES / "hh_rlhf.jsonl")), "data.train", tok, 256, "right")
    assert paired
    for row, enc in zip(rows("hh_rlhf.jsonl"), encoded, strict=True):
        record = row["chosen"].rsplit("Assistant: ", 1)[1]
        assert trained_text(tok, enc["chosen_ids"], enc["chosen_labels"]).startswith(record)
        assert "Human:" not in trained_text(tok, enc["chosen_ids"], enc["chosen_labels"])
        assert "Human:" not in trained_text(tok, enc["rejected_ids"], enc["rejected_labels"])


def test_a_nested_qa_set_maps_its_columns_into_a_chat(tok):
    """TriviaQA's `question` / `answer.value`, mapped to alpaca's fields: a chat turn pair under a chat template."""
    spec = DatasetSpec(str(SHAPES / "triviaqa.jsonl"), columns={"instruction": "question", "output": "answer.value"})
    encoded, _ = encode_split(spec, "data.train", tok, 256, "right")
    for row, enc in zip(rows("triviaqa.jsonl"), encoded, strict=True):
        messages = [
            {"role": "user", "content": row["question"]},
            {"role": "assistant", "content": row["answer"]["value"]},
        ]
        assert enc["input_ids"] == template_ids(tok, messages)
        assert trained_text(tok, enc["input_ids"], enc["labels"]) == row["answer"]["value"] + "<|im_end|>"


@pytest.mark.parametrize(
    ("message", "match"),
    [
        ({"role": "user", "content": "a", "train": True}, r"messages\[0\] is a user turn marked to train"),
        ({"role": "assistant", "content": "a", "weight": -1}, r"messages\[0\].weight must be a number >= 0"),
        ({"role": "assistant", "content": "a", "train": "no"}, r"messages\[0\].train must be true or false"),
        ({"role": "user", "content": "a", "tool_calls": [{"name": "f"}]}, r"messages\[0\] has tool_calls but role"),
        (
            {"role": "assistant", "content": "", "tool_calls": [{"arguments": {}}]},
            r"messages\[0\].tool_calls\[0\] needs",
        ),
    ],
)
def test_bad_marks_and_calls_name_the_message(message, match):
    with pytest.raises(LightFTError, match=r"^f.jsonl:3: " + match):
        to_example({"messages": [message]}, "messages", True, "f.jsonl:3")


def test_mixture_counts_follow_weights_exactly():
    a, b, c = (DatasetSpec(p, weight=w) for p, w in (("a", 2.0), ("b", 1.0), ("c", 1.0)))
    assert Mixture((a, b, c)).counts([10, 10, 20]) == [20, 10, 10]  # 40 examples: 1/2, 1/4, 1/4
    assert Mixture((a, b)).counts([5, 5]) == [7, 3]  # 10 * 2/3 = 6.67 -> 7 (largest remainder), 3.33 -> 3
    fixed = DatasetSpec("d", examples=25)
    assert Mixture((DatasetSpec("a"), DatasetSpec("b"), fixed)).counts([3, 4, 10]) == [3, 4, 25]
    draws = Mixture((fixed,)).draws([10])[0]
    assert sorted(draws.tolist()) == sorted(list(range(10)) * 2 + draws[20:].tolist()) and len(set(draws[20:])) == 5


def test_a_mixture_draws_each_source_in_its_ratio_the_same_every_time(tok):
    """Sources of different shapes, weights 3:1 over 28 examples: 21 and 7 (each source's rows found by content)."""
    shapes = (DatasetSpec(str(SHAPES / "sharegpt.jsonl"), weight=3.0),
              DatasetSpec(str(SHAPES / "sharegpt_roles.jsonl"), roles=ROLES, weight=1.0))  # fmt: skip
    mixed, stats = encode_split(Mixture(shapes, seed=7), "data.train", tok, 512, "right")
    again, _ = encode_split(Mixture(shapes, seed=7), "data.train", tok, 512, "right")
    other, _ = encode_split(Mixture(shapes, seed=8), "data.train", tok, 512, "right")
    assert len(mixed) == 28 and mixed["input_ids"] == again["input_ids"] and mixed["input_ids"] != other["input_ids"]
    alone = {tuple(ids) for ids in encode_split(shapes[1], "k", tok, 512, "right")[0]["input_ids"]}
    assert sum(tuple(ids) in alone for ids in mixed["input_ids"]) == 7
    assert "mixture of 2" in stats.summary("train") and "21 drawn from 16" in stats.summary("train")


def test_a_weighted_and_an_unweighted_source_mix(tok):
    shapes = (DatasetSpec(str(SHAPES / "marked.jsonl")), DatasetSpec(str(SHAPES / "sharegpt.jsonl")))
    mixed, _ = encode_split(Mixture(shapes), "data.train", tok, 512, "right")
    assert len(mixed) == 28 and sum(bool(w) for w in mixed["weights"]) == 12  # the marked rows keep their weights


@pytest.mark.parametrize(
    ("sources", "match"),
    [
        ([{"path": "a.jsonl", "weight": 0}], r"data.train\[0\].weight: 0 must be > 0"),
        ([{"path": "a.jsonl", "weight": 1}, {"path": "b.jsonl"}], r"some sources have a weight and others neither"),
        ([{"path": "a.jsonl", "weight": 1, "examples": 3}], r"data.train\[0\]: give weight or examples, not both"),
        ([{"path": "a.jsonl", "examples": 0}], r"data.train\[0\].examples: 0 must be >= 1"),
    ],
)
def test_bad_mixtures_are_refused_in_one_line(sources, match):
    with pytest.raises(LightFTError, match=match):
        Mixture(tuple(DatasetSpec(**s) for s in sources), key="data.train")


def test_sources_of_different_kinds_do_not_mix(tok):
    unpaired = ROOT / "data" / "preference" / "kto.jsonl"
    sources = (DatasetSpec(str(SHAPES / "ultrafeedback.jsonl")), DatasetSpec(str(unpaired)))
    mixture = Mixture(sources, key="data.train")
    with pytest.raises(LightFTError, match=r"data.train\[1\] .*unpaired \(KTO\) rows mixed with data.train\[0\]'s"):
        encode_preferences(mixture, "data.train", tok, 256, "right")


def test_encodings_are_cached_by_content_not_by_path(tmp_path, tok, monkeypatch):
    monkeypatch.setenv("LIGHTFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")  # where `datasets` caches its maps
    first = tmp_path / "a.jsonl"
    shutil.copy(SHAPES / "sharegpt.jsonl", first)
    encoded, _ = encode_split(DatasetSpec(str(first)), "k", tok, 512, "right")
    entries = list((tmp_path / "cache").iterdir())
    assert len(entries) == 1
    assert list((tmp_path / "hf").rglob("*.arrow")) and not list((tmp_path / "hf").rglob("cache-*.arrow"))  # once
    moved = tmp_path / "elsewhere" / "b.jsonl"
    moved.parent.mkdir()
    shutil.copy(first, moved)
    again, _ = encode_split(DatasetSpec(str(moved)), "k", tok, 512, "right")
    assert list((tmp_path / "cache").iterdir()) == entries and again["input_ids"] == encoded["input_ids"]
    moved.write_text(moved.read_text().replace("Market St", "Main St"))  # new content: encoded again
    changed, _ = encode_split(DatasetSpec(str(moved)), "k", tok, 512, "right")
    assert len(list((tmp_path / "cache").iterdir())) == 2 and changed["input_ids"] != encoded["input_ids"]
    encode_split(DatasetSpec(str(moved)), "k", tok, 256, "right")  # another setting: another entry
    assert len(list((tmp_path / "cache").iterdir())) == 3


def test_num_proc_encodes_the_same_ids(tok):
    spec = DatasetSpec(str(SHAPES / "tools.jsonl"))
    one, _ = encode_split(spec, "k", tok, 2048, "right")
    two, _ = encode_split(DatasetSpec(spec.path, max_examples=11), "k", tok, 2048, "right", num_proc=2)
    assert two["input_ids"] == one["input_ids"][:11]
