import json
import re

import pytest

from lightft.data.pipeline import encode_split
from lightft.data.sources import DatasetSpec, check_json, check_utf8, load_rows
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


LATIN1 = "Caf\u00e9 au lait".encode("latin-1")  # b"Caf\xe9 ...": not UTF-8


def not_utf8(path, suffix):
    """A file of `suffix` whose third line holds a Latin-1 byte (offset 3 of that line)."""
    if suffix == ".csv":
        lines = [b"prompt,completion", b"q0,a0", b"q1," + LATIN1, b"q2,a2"]
    elif suffix == ".json":
        lines = [b"[", b'{"text": "a"},', b'{"text": "' + LATIN1 + b'"}', b"]"]
    else:
        lines = [b'{"text": "a"}', b'{"text": "b"}', b'{"text": "' + LATIN1 + b'"}']
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_a_file_that_is_not_utf8_names_its_line_and_the_fix(tmp_path, suffix):
    path = not_utf8(tmp_path / f"latin1{suffix}", suffix)
    with pytest.raises(LightFTError) as error:
        load_rows(DatasetSpec(str(path)), "data.init_args.train")
    message = str(error.value)
    assert message.startswith(f"{path}:3: not UTF-8 text (byte 0xe9"), message
    assert "save the file as UTF-8" in message and "\n" not in message


def test_a_dataset_directory_with_a_file_that_is_not_utf8_names_that_file(tmp_path):
    directory = tmp_path / "data"
    directory.mkdir()
    write_jsonl(directory / "a.jsonl", [{"text": "fine"}])
    bad = not_utf8(directory / "b.jsonl", ".jsonl")
    with pytest.raises(LightFTError, match=rf"^{re.escape(str(bad))}:3: not UTF-8 text"):
        load_rows(DatasetSpec(str(directory)), "data.init_args.train")


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 8, 1 << 20])
def test_reading_in_chunks_finds_the_same_line_and_offset(tmp_path, chunk_size):
    """Two-byte characters cut by chunk boundaries are valid; the bad byte's line and offset do not depend on chunks."""
    path = tmp_path / "d.txt"
    path.write_bytes(b"ab\n" + "\u00e9\u00e8\n".encode() * 3 + b"ok \xe9\n" + b"more\n")
    with pytest.raises(LightFTError, match=rf"^{re.escape(str(path))}:5: not UTF-8 text \(byte 0xe9 at offset 21\)"):
        check_utf8(path, chunk_size)
    path.write_bytes("\u00e9\n".encode() * 4 + "\u00e9".encode()[:1])  # cut off in the middle of the last character
    with pytest.raises(LightFTError, match=r":5: not UTF-8 text \(byte 0xc3 at offset 12\)"):
        check_utf8(path, chunk_size)


def test_utf8_with_a_byte_order_mark_is_read(tmp_path, tokenizer):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(chat("caf\u00e9?", "oui")).encode() + b"\n")
    encoded, stats = encode_split(DatasetSpec(str(path)), "k", tokenizer, 64, "right")
    assert stats.kept == 1
