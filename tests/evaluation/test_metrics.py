"""Reference metrics against numbers worked by hand."""

import math

import pytest

from lightft.evaluation import metrics

RECORD = '{"customer": "Mei", "item": "latte", "quantity": 2, "store": "Mill Lane", "pickup": "8:30"}'


def test_rouge_l_is_the_f_measure_of_the_longest_common_subsequence():
    # LCS("the cat sat", "the cat sat on mat") = 3 words: precision 3/3, recall 3/5, F = 2PR / (P + R) = 0.75
    row = metrics.per_example("the cat sat", "the cat sat on mat", with_json=False)
    assert row["rouge_l"] == pytest.approx(0.75)
    # LCS("a x b y c", "a b c") = 3: P 3/5, R 1, F = 2 * 0.6 / 1.6
    assert metrics.per_example("a x b y c", "a b c", False)["rouge_l"] == pytest.approx(0.75)


def test_exact_match_ignores_surrounding_whitespace_only():
    assert metrics.per_example(" yes\n", "yes", False)["exact_match"] == 1.0
    assert metrics.per_example("Yes", "yes", False)["exact_match"] == 0.0


def test_corpus_bleu_is_the_geometric_mean_of_clipped_n_gram_precisions():
    # "a b c d e" vs "a b c d f": 1-grams 4/5, 2-grams 3/4, 3-grams 2/3, 4-grams 1/2; equal lengths: no brevity penalty
    rows = [metrics.per_example("a b c d e", "a b c d f", False)]
    got = metrics.corpus(["a b c d e"], ["a b c d f"], rows)
    assert got["bleu"] == pytest.approx((4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25, abs=1e-6)
    assert got["exact_match"] == 0.0 and got["rouge_l"] == pytest.approx(0.8)  # LCS 4 of 5 both ways


def test_corpus_bleu_counts_n_grams_over_the_corpus_and_applies_the_brevity_penalty():
    # two sentences: "a b c d" (exact) and "a b" vs "a b c d": 1-grams 6/6, 2-grams 4/4, 3-grams 2/2, 4-grams 1/1;
    # candidate length 6 < reference length 8: BP = exp(1 - 8/6)
    predictions, references = ["a b c d", "a b"], ["a b c d", "a b c d"]
    rows = [metrics.per_example(p, r, False) for p, r in zip(predictions, references, strict=True)]
    assert metrics.corpus(predictions, references, rows)["bleu"] == pytest.approx(math.exp(1 - 8 / 6), abs=1e-6)


def test_chrf_is_one_for_identical_text_and_zero_for_disjoint_text():
    text = "the quick brown fox jumps over the lazy dog"
    rows = [metrics.per_example(text, text, False)]
    assert metrics.corpus([text], [text], rows)["chrf"] == pytest.approx(1.0)
    rows = [metrics.per_example("123 456", text, False)]
    assert metrics.corpus(["123 456"], [text], rows)["chrf"] == pytest.approx(0.0)  # no character in common


def test_json_fields_count_only_equal_values_of_a_lone_object():
    two_wrong = RECORD.replace('"Mei"', '"May"').replace("2,", "3,")
    row = metrics.per_example(two_wrong, RECORD, with_json=True)
    assert row == {"exact_match": 0.0, "rouge_l": pytest.approx(row["rouge_l"]), "json_valid": 1.0,
                   "json_exact": 0.0, "field_match": pytest.approx(3 / 5)}  # fmt: skip
    chatty = RECORD + "\nOrder logged."
    assert metrics.per_example(chatty, RECORD, True)["json_valid"] == 0.0  # text around the object: not JSON
    assert metrics.per_example(chatty, RECORD, True)["field_match"] == 0.0
    reordered = '{"pickup": "8:30", "store": "Mill Lane", "quantity": 2, "item": "latte", "customer": "Mei"}'
    assert metrics.per_example(reordered, RECORD, True)["json_exact"] == 1.0  # the same record, other key order
    assert metrics.field_match("[1, 2]", RECORD) == 0.0  # JSON, but not an object


def test_json_metrics_apply_only_when_every_reference_is_an_object():
    assert metrics.json_references([RECORD, RECORD])
    assert not metrics.json_references([RECORD, "plain text"])
    assert not metrics.json_references([])
