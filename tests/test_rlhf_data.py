"""The shipped RLHF task (data/rlhf/): its files are what make_data.py writes, the SFT answers mix the two styles,
held-out answers and references are bare records, seed pairs rank as StrictJSONReward does, and no order repeats."""

import importlib.util
import json

from lightft.rl.rewards import StrictJSONReward, strict_json
from tests.conftest import ROOT

DATA = ROOT / "data" / "rlhf"
FILES = ("sft_train", "prompts_train", "val", "pairs_seed", "pairs_val")


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / f"{name}.jsonl").read_text().splitlines()]


def test_make_data_rewrites_the_shipped_files(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("rlhf_make_data", DATA / "make_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "HERE", tmp_path)
    module.main()
    for name in FILES:
        assert (tmp_path / f"{name}.jsonl").read_text() == (DATA / f"{name}.jsonl").read_text(), name


def test_sft_answers_mix_bare_records_and_chatty_ones():
    answers = [row["messages"][1]["content"] for row in rows("sft_train")]
    bare = sum(map(strict_json, answers)) / len(answers)
    assert 0.3 < bare < 0.45, bare  # 64% chatty: 95% of the chatty customers' answers, 25% of the others'
    assert all(a.startswith("{") for a in answers)  # the chatty ones hold the same record, then a line


def test_references_are_bare_records_and_pairs_rank_as_the_rule_reward():
    for name in ("prompts_train", "val"):
        assert all(strict_json(row["messages"][1]["content"]) for row in rows(name)), name
    reward = StrictJSONReward()
    for name in ("pairs_seed", "pairs_val"):
        pairs = rows(name)
        chosen = [p["chosen"][0]["content"] for p in pairs]
        rejected = [p["rejected"][0]["content"] for p in pairs]
        prompts = [""] * len(pairs)
        assert reward(prompts, chosen, chosen) == [1.0] * len(pairs)
        assert all(r < 1.0 for r in reward(prompts, rejected, chosen)), name


def test_no_order_appears_in_two_files():
    prompts = [r["messages"][0]["content"] for name in ("sft_train", "prompts_train", "val") for r in rows(name)]
    prompts += [r["prompt"][0]["content"] for name in ("pairs_seed", "pairs_val") for r in rows(name)]
    assert len(prompts) == len(set(prompts)) == 640 + 256 + 64 + 128 + 32
