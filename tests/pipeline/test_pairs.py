"""`generate_pairs`: of each prompt's K samples, the best and the worst by the given reward make the pair."""

import json

import pytest

from lightft.data.sources import DatasetSpec
from lightft.generation import GenerationSettings
from lightft.pipeline import pairs as pairs_module
from lightft.pipeline.pairs import generate_pairs, prompt_items
from tests.conftest import QUICKSTART


class LengthReward:
    """Longer is better (a rule anyone can check by eye)."""

    def __call__(self, prompts, completions, references):
        return [float(len(c)) for c in completions]


def test_the_best_and_the_worst_sample_of_each_prompt_make_the_pair(tmp_path, tiny_model, tokenizer, monkeypatch):
    samples = iter(["bb", "a", "dddd", "ccc",  # prompt 0: chosen dddd, rejected a
                    "xx", "yy", "zz", "ww",  # prompt 1: all score 2, no preference: skipped
                    "q", "rrrrr", "ss", "t"])  # prompt 2: chosen rrrrr, rejected q (the first of the ties)  # fmt: skip

    def fake_generate(model, tokenizer, ids, mask, settings):
        assert settings.do_sample and settings.temperature == 0.7
        return [next(samples) for _ in range(len(ids))]

    monkeypatch.setattr(pairs_module, "generate", fake_generate)
    items = prompt_items(DatasetSpec(str(QUICKSTART / "val.jsonl")), "prompts", tokenizer, limit=3)
    out = tmp_path / "pairs.jsonl"
    stats = generate_pairs(tiny_model, tokenizer, items, LengthReward(), out, 4,
                           GenerationSettings(8, do_sample=True, temperature=0.7), batch_size=3)  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows] == [("dddd", "a"), ("rrrrr", "q")]
    assert rows[0]["prompt"] == json.loads((QUICKSTART / "val.jsonl").read_text().splitlines()[0])["messages"][:1]
    assert (rows[1]["score_chosen"], rows[1]["score_rejected"]) == (5.0, 1.0)
    assert (stats.prompts, stats.pairs) == (3, 2)
    assert stats.mean_reward == pytest.approx((2 + 1 + 4 + 3 + 2 * 4 + 1 + 5 + 2 + 1) / 12)
