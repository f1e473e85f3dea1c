import pytest

from lightft.data.formats import check_columns, detect_format, prompt_only, remap, to_example
from lightft.errors import LightFTError


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        (["messages"], "messages"),
        (["prompt", "completion", "id"], "prompt_completion"),
        (["instruction", "input", "output"], "alpaca"),
        (["text"], "text"),
    ],
)
def test_detect_format(columns, expected):
    assert detect_format(columns, "f") == expected


def test_unknown_columns_name_the_fix():
    with pytest.raises(LightFTError, match="columns:"):
        detect_format(["question", "answer"], "data.init_args.train (f.jsonl)")


def test_missing_required_column():
    with pytest.raises(LightFTError, match=r"needs field\(s\) \['completion'\]"):
        check_columns("prompt_completion", ["prompt"], "where")


def test_null_field_names_the_row():
    with pytest.raises(LightFTError, match="train.jsonl:7: field 'completion' is missing"):
        to_example({"prompt": "a", "completion": None}, "prompt_completion", True, "train.jsonl:7")


def test_bad_role_names_the_message():
    with pytest.raises(LightFTError, match=r"messages\[1\] has role 'bot', which is not one of .*roles: \{bot: user"):
        to_example(
            {"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]}, "messages", True, "w"
        )


def test_column_mapping_reaches_into_records():
    row = {"question": "Who?", "answer": {"value": "Me", "aliases": []}}
    mapped = remap(row, {"prompt": "question", "completion": "answer.value"})
    assert mapped["prompt"] == "Who?" and mapped["completion"] == "Me"


def test_prompt_only_drops_the_trained_tail():
    example = to_example(
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, "messages", True, "w"
    )
    assert prompt_only(example).messages == [{"role": "user", "content": "a"}]
