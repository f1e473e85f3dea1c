import pytest

from lightft.data.formats import Example, to_example
from lightft.data.templates import IGNORE_INDEX, ExampleEncoder, conversation_spans
from lightft.errors import LightFTError


def trained_text(tokenizer, encoded):
    pairs = zip(encoded.input_ids, encoded.labels, strict=True)
    return tokenizer.decode([i for i, label in pairs if label != IGNORE_INDEX])


def test_only_assistant_turns_train_and_eos_is_trained(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello you"},
        {"role": "user", "content": "More"},
        {"role": "assistant", "content": "Sure"},
    ]
    encoded = ExampleEncoder(tokenizer, 256).encode(Example(messages, [2, 4]))
    assert trained_text(tokenizer, encoded) == "Hello you<|im_end|>Sure<|im_end|>"
    # the ids are exactly the chat template's ids (one tokenization of the rendered text)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    assert encoded.input_ids == tokenizer(full, add_special_tokens=False)["input_ids"]
    assert tokenizer.eos_token_id in [label for label in encoded.labels if label != IGNORE_INDEX]
    assert encoded.labels[0] == IGNORE_INDEX


def test_conversational_prompt_completion_trains_completion_only(tokenizer):
    row = {
        "prompt": [
            {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "A1"},
            {"role": "user", "content": "Q2"},
        ],
        "completion": [{"role": "assistant", "content": "A2"}],
    }
    encoded = ExampleEncoder(tokenizer, 256).encode(to_example(row, "prompt_completion", True, "row 0"))
    assert trained_text(tokenizer, encoded) == "A2<|im_end|>"


def test_plain_prompt_completion_appends_trained_eos(tokenizer):
    example = to_example({"prompt": "2+2=", "completion": " 4"}, "prompt_completion", True, "row 0")
    encoded = ExampleEncoder(tokenizer, 64).encode(example)
    assert encoded.input_ids[-1] == tokenizer.eos_token_id
    assert trained_text(tokenizer, encoded) == " 4<|im_end|>"


def test_text_format_trains_everything_but_the_first_token(tokenizer):
    encoded = ExampleEncoder(tokenizer, 64).encode(to_example({"text": "the lazy dog"}, "text", True, "row 0"))
    assert encoded.labels[0] == IGNORE_INDEX
    assert encoded.labels[1:] == encoded.input_ids[1:]


def test_alpaca_uses_the_chat_template_when_there_is_one(tokenizer):
    row = {"instruction": "Add", "input": "2 and 2", "output": "4"}
    example = to_example(row, "alpaca", conversational_alpaca=True, where="row 0")
    assert example.messages[0]["content"] == "Add\n\n2 and 2"
    plain = to_example(row, "alpaca", conversational_alpaca=False, where="row 0")
    assert "### Instruction:\nAdd" in plain.segments[0][0] and plain.segments[1] == ("4", True)


@pytest.mark.parametrize(
    ("policy", "kept"),
    [("right", "start"), ("left", "end"), ("drop", None)],
)
def test_truncation_policies(tokenizer, policy, kept):
    example = Example(segments=[("a b c d e f g h i j k l m n o p", True)])
    full = ExampleEncoder(tokenizer, 1000).encode(example)
    encoded = ExampleEncoder(tokenizer, 6, policy).encode(example)
    if kept is None:
        assert encoded is None
        return
    assert encoded.truncated and len(encoded.input_ids) == 6
    expected = full.input_ids[:6] if kept == "start" else full.input_ids[-6:]
    assert encoded.input_ids == expected
    assert encoded.labels[0] == IGNORE_INDEX


def test_truncating_away_the_answer_leaves_zero_trained_tokens(tokenizer):
    example = Example([{"role": "user", "content": "word " * 50}, {"role": "assistant", "content": "yes"}], [1])
    assert ExampleEncoder(tokenizer, 16, "right").encode(example).n_trained == 0


def test_empty_assistant_turn_still_trains_its_eos(tokenizer):
    example = Example([{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}], [1])
    encoded = ExampleEncoder(tokenizer, 64).encode(example)
    assert trained_text(tokenizer, encoded) == "<|im_end|>"


def test_template_that_rewrites_history_is_refused(tokenizer):
    class Rewriting:
        chat_template = "x"
        name_or_path = "weird"
        eos_token = "<|im_end|>"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            # drops earlier assistant turns, like templates that strip reasoning from history
            kept = [m for i, m in enumerate(messages) if m["role"] != "assistant" or i == len(messages) - 1]
            return "".join(f"<{m['role']}>{m['content']}" for m in kept) + (
                "<assistant>" if add_generation_prompt else ""
            )

    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    with pytest.raises(LightFTError, match="turn by turn"):
        conversation_spans(Rewriting(), messages + [{"role": "assistant", "content": "d"}], [1, 3])


def test_missing_chat_template_is_a_clear_error(tokenizer):
    template = tokenizer.chat_template
    tokenizer.chat_template = None
    try:
        with pytest.raises(LightFTError, match="chat_template"):
            ExampleEncoder(tokenizer, 64).encode(
                Example([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], [1])
            )
    finally:
        tokenizer.chat_template = template
