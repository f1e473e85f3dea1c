"""Rewards (`lightft/rl/rewards.py`): the rule rewards on hand-worked cases (StrictJSONReward: the data/rlhf
task's bare-record preference), a tiny reward model saved to disk and scored through `RewardModelScorer`
against its own forward pass, and `score`'s checks of what a reward returns.
PPO/GRPO training with a reward: tests/modules/test_ppo.py; a broken reward through the CLI: tests/test_bad_input.py.
"""

import json
import math

import pytest
import torch

from lightft.errors import LightFTError
from lightft.models.loading import load_model
from lightft.rl.rewards import (
    JSONMatchReward,
    KeywordReward,
    RewardFunction,
    RewardModelScorer,
    StrictJSONReward,
    fields_matched,
    find_record,
    score,
    strict_json,
)

REFERENCE = '{"item": "latte", "qty": 2}'


def test_keyword_reward_counts_or_measures_the_keywords_density():
    completions = ["abcab", "xyz", "", "ab"]
    assert KeywordReward("ab", per_char=False)([""] * 4, completions, [""] * 4) == [2.0, 0.0, 0.0, 1.0]
    # density: characters of keyword per character of completion, in [0, 1]
    assert KeywordReward("ab")([""] * 4, completions, [""] * 4) == [2 * 2 / 5, 0.0, 0.0, 1.0]
    with pytest.raises(LightFTError, match="keyword: must not be empty"):
        KeywordReward("")


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (REFERENCE, 1.0),
        (' \n{"qty": 2, "item": "latte"}\n', 1.0),  # field order and surrounding whitespace do not matter
        ('{"item": "latte", "qty": 2, "size": "tall"}', 1.0),  # extra fields are not penalised
        ('{"item": "latte", "qty": 3}', 0.5),  # one of two fields right
        ('{"item": "latte"}', 0.5),  # a missing field counts as wrong
        ('{"item": "Latte", "qty": "2"}', 0.0),  # exact values: case and type matter
        ('{"item": "latte", "qty": 2', "invalid"),  # not JSON
        ('["latte", 2]', "invalid"),  # JSON, but not an object
        ("Sure! Here it is: " + REFERENCE, "invalid"),  # text around the object
    ],
)
def test_json_match_reward_scores_the_fraction_of_reference_fields(completion, expected):
    for invalid in (0.0, -1.0):
        want = invalid if expected == "invalid" else expected
        assert JSONMatchReward(invalid=invalid)(["p"], [completion], [REFERENCE]) == [want]


def test_json_match_reward_without_a_usable_reference_scores_invalid():
    reward = JSONMatchReward(invalid=-1.0)
    assert reward(["p", "p"], ["{}", '{"a": 1}'], ["{}", "not json"]) == [-1.0, -1.0]


RECORD = {"customer": "Mei", "item": "latte", "quantity": 2, "store": "Oak Street", "pickup": "8:30"}
BARE = json.dumps(RECORD)
ONE_WRONG = json.dumps({**RECORD, "quantity": 3})


@pytest.mark.parametrize(
    ("text", "strict"),
    [
        (BARE, True),
        (" \n" + BARE + "\n", True),  # surrounding whitespace is not text
        ("{}", True),
        (BARE + "\nOrder logged for Mei.", False),  # the friendly annotator's line
        ("Sure! " + BARE, False),
        ("```json\n" + BARE + "\n```", False),
        (BARE + BARE, False),  # two objects
        ("[1, 2]", False),  # JSON, not an object
        ('"a string"', False),
        (BARE[:-1], False),  # truncated
        ("", False),
    ],
)
def test_strict_json_holds_only_for_exactly_one_json_object(text, strict):
    assert strict_json(text) is strict


def test_find_record_returns_the_first_json_object_inside_text():
    assert find_record(BARE + "\nOrder logged for Mei.") == RECORD
    assert find_record("Use {these braces}: " + BARE + ' and {"b": 2}') == RECORD  # a '{' that is not JSON is skipped
    assert find_record('[{"a": 1}]') == {"a": 1}
    assert find_record("Mei wants two lattes") is None and find_record('{"a": 1') is None and find_record("") is None


def test_fields_matched_counts_exact_values_of_the_reference_fields():
    assert fields_matched(RECORD, RECORD) == 1.0
    assert fields_matched({**RECORD, "size": "tall"}, RECORD) == 1.0  # extra fields are free
    assert fields_matched({"customer": "Mei", "quantity": "2"}, RECORD) == 1 / 5  # missing fields and "2" != 2


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (BARE, 1.0),
        (ONE_WRONG, 0.8),  # 4 of 5 fields, bare
        (BARE + "\nOrder logged for Mei.", 0.5),  # 5 of 5 fields x surrounded 0.5
        ("```json\n" + BARE + "\n```", 0.5),
        (ONE_WRONG + "\nThanks, Mei!", 0.4),  # 4/5 x 0.5
        (json.dumps({"customer": "Ana", "item": "mocha"}), 0.0),  # a bare record with no field right
        ("Mei wants two lattes at Oak Street.", "invalid"),
        (BARE[:-1], "invalid"),
    ],
)
def test_strict_json_reward_discounts_a_record_surrounded_by_text(completion, expected):
    for invalid in (0.0, -1.0):
        want = invalid if expected == "invalid" else expected
        assert StrictJSONReward(invalid=invalid)(["p"], [completion], [BARE]) == [pytest.approx(want)]


def test_strict_json_reward_surrounded_weight_and_references():
    chatty = BARE + "\nOrder logged for Mei."
    assert StrictJSONReward(surrounded=0.25)(["p"] * 2, [chatty, BARE], [BARE] * 2) == [0.25, 1.0]
    assert StrictJSONReward(surrounded=1.0)(["p"], [chatty], [BARE]) == [1.0]  # field accuracy alone
    assert StrictJSONReward()(["p"], [BARE], [chatty]) == [1.0]  # a chatty reference: its record is used
    assert StrictJSONReward(invalid=-1.0)(["p"] * 2, [BARE] * 2, ["no record", "{}"]) == [-1.0, -1.0]
    with pytest.raises(LightFTError, match=r"reward\.init_args\.surrounded: 1\.5 is not in \[0, 1\]"):
        StrictJSONReward(surrounded=1.5)


def test_rule_rewards_are_reward_functions():
    assert isinstance(KeywordReward("a"), RewardFunction) and isinstance(JSONMatchReward(), RewardFunction)
    assert isinstance(StrictJSONReward(), RewardFunction)
    assert isinstance(RewardModelScorer("unused"), RewardFunction)


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory, tiny_spec, tokenizer):
    """A tiny reward model (the tiny Llama with a one-label scalar head) and its tokenizer, saved as an export is."""
    out = tmp_path_factory.mktemp("reward-model")
    torch.manual_seed(0)
    model = load_model(tiny_spec, tokenizer, head="reward")
    torch.nn.init.normal_(model.score.weight)  # scores that differ between texts
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def forward_score(reward_dir, tokenizer, text: str, keep: int | None = None) -> float:
    """The saved model's score of one text, unpadded: its logit at the last token (of the last `keep` tokens)."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(reward_dir).eval()
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[:, -(keep or 0) :]
    with torch.no_grad():
        return model(input_ids=ids).logits[0, 0].item()


PROMPTS = ["<|im_start|>user\nOrder?<|im_end|>\n<|im_start|>assistant\n"] * 3
COMPLETIONS = ['{"item": "latte"}', "no", "two lattes at Oak Street, please, and a muffin"]


def test_reward_model_scorer_scores_prompt_completion_and_the_end_of_the_turn(reward_dir, tokenizer):
    scorer = RewardModelScorer(str(reward_dir), batch_size=2)  # 3 texts: a padded batch of 2, then 1
    scores = torch.as_tensor(scorer(PROMPTS, COMPLETIONS, [""] * 3))
    texts = [p + c + "<|im_end|>\n" for p, c in zip(PROMPTS, COMPLETIONS, strict=True)]  # the ChatML turn's end
    expected = [forward_score(reward_dir, tokenizer, text) for text in texts]
    torch.testing.assert_close(scores, torch.tensor(expected), rtol=1e-4, atol=1e-5)
    assert len(set(scores.tolist())) == 3  # the texts are told apart
    one_at_a_time = RewardModelScorer(str(reward_dir), batch_size=1)(PROMPTS, COMPLETIONS, [""] * 3)
    torch.testing.assert_close(torch.as_tensor(one_at_a_time), scores, rtol=1e-4, atol=1e-5)  # padding changes none


def test_the_scorer_scores_where_reward_model_training_scored(reward_dir, tokenizer, tmp_path):
    """The score of (prompt, completion) is the saved model's score of the pair side training encoded: the same
    last token (ChatML's newline after `<|im_end|>`); a plain-text prompt ends with EOS, as plain examples do.
    """  # noqa: D205
    from lightft.data.preference import encode_preferences
    from lightft.data.sources import DatasetSpec
    from tests.conftest import write_jsonl

    rows = [{"prompt": [{"role": "user", "content": "Order?"}], "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": "no thanks"}]} for c in COMPLETIONS]  # fmt: skip
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    encoded, _, _ = encode_preferences(DatasetSpec(str(path)), "data.train", tokenizer, 256, "right")
    trained = [forward_score(reward_dir, tokenizer, tokenizer.decode(row["chosen_ids"])) for row in encoded]
    scores = RewardModelScorer(str(reward_dir))(PROMPTS, COMPLETIONS, [""] * 3)
    torch.testing.assert_close(torch.as_tensor(scores), torch.tensor(trained), rtol=1e-4, atol=1e-5)
    plain = RewardModelScorer(str(reward_dir))(["Order? "], ["two"], [""])
    torch.testing.assert_close(
        torch.as_tensor(plain)[0].item(), forward_score(reward_dir, tokenizer, "Order? two<|im_end|>")
    )


def test_reward_model_scorer_keeps_the_end_of_a_long_text(reward_dir, tokenizer):
    text = PROMPTS[2] + COMPLETIONS[2] + "<|im_end|>\n"
    assert len(tokenizer(text, add_special_tokens=False).input_ids) > 8
    scores = RewardModelScorer(str(reward_dir), max_length=8)(PROMPTS[2:], COMPLETIONS[2:], [""])
    assert scores[0].item() == pytest.approx(forward_score(reward_dir, tokenizer, text, keep=8), abs=1e-5)
    assert not math.isclose(scores[0].item(), forward_score(reward_dir, tokenizer, text), abs_tol=1e-5)


def test_reward_model_scorer_names_a_missing_directory(tmp_path):
    with pytest.raises(LightFTError, match=r"reward\.init_args\.path: reward model directory '.*absent' not found"):
        RewardModelScorer(str(tmp_path / "absent"))(["p"], ["c"], [""])


class Returns:
    """A reward answering `value` whatever it is asked."""

    def __init__(self, value) -> None:
        self.value = value

    def __call__(self, prompts, completions, references):
        if isinstance(self.value, Exception):
            raise self.value
        return self.value


def test_score_returns_float32_scores_one_per_completion():
    scores = score(Returns([1, 2]), ["p", "p"], ["a", "b"], ["", ""])
    assert scores.dtype == torch.float32 and scores.tolist() == [1.0, 2.0]
    assert score(KeywordReward("a", per_char=False), ["p"], ["banana"], [""]).tolist() == [3.0]


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ([1.0], r"\(Returns\): returned shape \(1,\) for 2 completions"),
        ([[1.0], [2.0]], r"returned shape \(2, 1\) for 2 completions"),
        ([1.0, float("nan")], "returned a non-finite score"),
        ([1.0, float("inf")], "returned a non-finite score"),
        (ValueError("boom"), r"\(Returns\): raised ValueError: boom; fix the reward function"),
        (LightFTError("its own message"), "^its own message$"),  # the reward's own lightft errors pass unchanged
    ],
)
def test_score_refuses_what_is_not_one_finite_score_per_completion(value, match):
    with pytest.raises(LightFTError, match=match):
        score(Returns(value), ["p", "p"], ["a", "b"], ["", ""])
