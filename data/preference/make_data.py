"""Generate preference data for the quickstart task (free-text coffee order -> JSON record).

Every quickstart order becomes a pair: `chosen` is the exact record, `rejected` a typical near-miss of a base model
(chatty prose, a wrong field, a quantity spelled as a word, a missing field). `kto.jsonl` unpairs them for KTO
(`label` true for the record, false for the near-miss). Deterministic: re-running rewrites the same files.

    python data/preference/make_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
QUICKSTART = HERE.parent / "quickstart"
NUMBER_WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def near_miss(record: dict, rng: random.Random) -> str:
    """A plausible wrong answer for `record`."""
    kind = rng.randrange(4)
    if kind == 0:
        return (
            f"Sure! I've noted that {record['customer']} would like {record['quantity']} {record['item']} from "
            f"{record['store']}, to be picked up at {record['pickup']}."
        )
    wrong = dict(record)
    if kind == 1:
        wrong["quantity"] = NUMBER_WORDS[record["quantity"] - 1]
    elif kind == 2:
        wrong["quantity"] = record["quantity"] % 10 + 1
    else:
        del wrong[rng.choice(["store", "pickup", "customer"])]
    return json.dumps(wrong)


def main() -> None:
    """Write train.jsonl / val.jsonl (pairs) and kto.jsonl (unpaired, from the training pairs)."""
    rng = random.Random(0)
    for split, limit in (("train", 400), ("val", 50)):
        rows = [json.loads(line) for line in (QUICKSTART / f"{split}.jsonl").read_text().splitlines()][:limit]
        pairs = []
        for row in rows:
            prompt, answer = row["messages"][:1], row["messages"][1]["content"]
            rejected = near_miss(json.loads(answer), rng)
            pairs.append(
                {
                    "prompt": prompt,
                    "chosen": [{"role": "assistant", "content": answer}],
                    "rejected": [{"role": "assistant", "content": rejected}],
                }
            )
        (HERE / f"{split}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
        if split == "train":
            unpaired = [
                {"prompt": p["prompt"], "completion": p[side], "label": side == "chosen"}
                for i, p in enumerate(pairs)
                for side in (("chosen", "rejected") if i % 2 else ("rejected", "chosen"))
            ]
            (HERE / "kto.jsonl").write_text("".join(json.dumps(u) + "\n" for u in unpaired))


if __name__ == "__main__":
    main()
