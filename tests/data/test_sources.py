import json

import pytest

from lightft.data.pipeline import encode_split
from lightft.data.sources import DatasetSpec, check_json, load_rows
from lightft.errors import LightFTError
from tests.conftest import chat, write_jsonl


def test_malformed_json_line_is_reported_with_its_line_number(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(chat("a", "b")) + "\n\n" + '{"messages": [}\n')
    with pytest.raises(LightFTError, match=r"train.jsonl:3: malformed JSON line"):
        check_json(path)


def test_json_array_error_has_a_line(tmp_path):
    path = tmp_path / "train.json"
    path.write_text('[\n {"text": "a"},\n {"text": }\n]')
    with pytest.raises(LightFTError, match=r"train.json:3: malformed JSON"):
        check_json(path)


def test_missing_file_names_the_key(tmp_path):
    with pytest.raises(LightFTError, match=r"data.init_args.train.path: data file .*nope.jsonl' not found"):
        load_rows(DatasetSpec(str(tmp_path / "nope.jsonl")), "data.init_args.train")


def test_unreachable_hub_dataset_is_a_clear_error():
    with pytest.raises(LightFTError, match="could not be loaded from the Hub"):
        load_rows(DatasetSpec("no-such-org/no-such-dataset"), "data.init_args.train")


def test_rows_are_located_by_line(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [chat("a", "b"), {"messages": [{"role": "user"}]}])
    with pytest.raises(LightFTError, match=r"d.jsonl:2: field 'messages\[0\].content' must be a string"):
        encode_split(DatasetSpec(str(path)), "data.init_args.train", tokenizer, 64, "right")


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".json"])
def test_other_local_formats(tmp_path, tokenizer, suffix):
    import datasets

    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(5)]
    path = tmp_path / f"d{suffix}"
    dataset = datasets.Dataset.from_list(rows)
    if suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        getattr(dataset, "to_" + suffix[1:])(str(path))
    encoded, stats = encode_split(DatasetSpec(str(path)), "k", tokenizer, 64, "right")
    assert stats.kept == 5 and len(encoded) == 5


def test_zero_trained_examples_are_counted_and_all_zero_fails(tmp_path, tokenizer):
    rows = [chat("hello " * 40, "x"), chat("short", "answer")]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    encoded, stats = encode_split(DatasetSpec(str(path)), "k", tokenizer, 32, "right")
    assert (stats.rows, stats.kept, stats.zero_trained, stats.first_zero) == (2, 1, 1, f"{path}:1")
    only_bad = write_jsonl(tmp_path / "bad.jsonl", [rows[0]])
    with pytest.raises(LightFTError, match="all 1 examples train on zero tokens"):
        encode_split(DatasetSpec(str(only_bad)), "k", tokenizer, 32, "right")


def test_empty_after_dropping_too_long(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [chat("hello " * 40, "x")])
    with pytest.raises(LightFTError, match="no example is left"):
        encode_split(DatasetSpec(str(path)), "k", tokenizer, 16, "drop")


def test_changed_settings_do_not_reuse_the_cache(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [chat("hello there friend", "answer")])
    long, _ = encode_split(DatasetSpec(str(path)), "k", tokenizer, 64, "right")
    short, _ = encode_split(DatasetSpec(str(path)), "k", tokenizer, 8, "left")
    assert len(short[0]["input_ids"]) == 8 < len(long[0]["input_ids"])
