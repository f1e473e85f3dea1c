r"""Generate the RLHF task: the quickstart's coffee order -> JSON record, with a preference SFT data does not show.

The task. A user message `Log this order: <free text>` is answered with the record `{"customer", "item",
"quantity", "store", "pickup"}` (the quickstart's vocabulary, imported from data/quickstart/make_data.py).

The hidden preference. The SFT answers come from two kinds of annotators: a terse one writes the record alone; a
friendly one adds a confirmation line after it (`{...}\nOrder logged for Mei.`). The downstream consumer parses the
whole answer as JSON, so it wants the record and nothing else, but the SFT data shows both styles (64% of its
answers carry the line) and never says which is wanted: only feedback (rankings, a reward) reveals it. The friendly
annotator took more of the chatty customers' orders (templates that greet or say please: 95% of answers there carry
the line, 25% elsewhere), so an SFT model's greedy answers are a prompt-dependent mix rather than all one style, and
its samples disagree within a prompt often enough that rankings of a few samples are informative. The choice is one
token: after the record's closing `"}` SmolLM2 emits `<|im_end|>` or `\n` (and then the line).

How it is measured. `lightft.rl.rewards.strict_json(completion)` is True when the whole completion is exactly one
JSON object; the held-out preference metric is the fraction of `val.jsonl` completions for which it holds (field
accuracy is reported beside it, so that "no chatter" is not bought with wrong records). The rule reward standing
in for human rankings is `lightft.rl.rewards.StrictJSONReward`: fraction of reference fields matched for a bare
record, half that for a record surrounded by text, 0 without a record.

Files (deterministic: re-running rewrites the same files; no order appears in two files):
    sft_train.jsonl   640 chat examples, the two annotators' styles mixed (the SFT stage)
    prompts_train.jsonl  256 chat examples whose assistant turn is the bare record: prompts + references for
                      PPO and for sampling preference pairs (PromptDataModule takes the user turn as prompt)
    val.jsonl         64 held-out orders (a quarter with customer names never seen elsewhere), bare records
    pairs_seed.jsonl  128 human-style preference pairs (`prompt`/`chosen`/`rejected`), ranked as StrictJSONReward
                      ranks them: bare record over record + line (3 in 4), exact record over one wrong field (1 in 4)
    pairs_val.jsonl   32 such pairs on other orders, to validate a reward model or DPO

    python data/rlhf/make_data.py
"""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

HERE = Path(__file__).parent


def _quickstart():
    """The quickstart generator, loaded by path: `data/` is not a package, and both scripts are `make_data`."""
    spec = importlib.util.spec_from_file_location("quickstart_make_data", HERE.parent / "quickstart" / "make_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


QS = _quickstart()
CHATTY_TEMPLATES = {1, 5, 6, 7}  # indices into QS.TEMPLATES: greetings, "please", questions, "New order!"
CHATTER_RATE = {True: 0.95, False: 0.25}  # friendly annotator's share, by whether the customer was chatty
CONFIRMATIONS = [
    "Order logged for {name}.",
    "Thanks, {name}! See you at {time}.",
    "Got it: {qty} {item} for {name}.",
    "All set, {name} - enjoy!",
    "Your order is in, {name}.",
    "Logged. Have a great day!",
]


def make_order(rng: random.Random, names: list[str]) -> tuple[str, dict, bool]:
    """(user message, record, whether the customer wrote chattily) of one random order."""
    name, store = rng.choice(names), rng.choice(QS.STORES)
    singular, plural = rng.choice(QS.ITEMS)
    quantity = rng.randint(1, 10)
    spoken = QS.NUMBER_WORDS[quantity - 1] if rng.random() < 0.4 else str(quantity)
    time = f"{rng.randint(7, 18)}:{rng.choice(['00', '15', '30', '45'])}"
    template = rng.randrange(len(QS.TEMPLATES))
    sentence = QS.TEMPLATES[template].format(
        name=name, qty=spoken, item=singular if quantity == 1 else plural, store=store, time=time
    )
    record = {"customer": name, "item": singular, "quantity": quantity, "store": store, "pickup": time}
    return f"Log this order: {sentence}", record, template in CHATTY_TEMPLATES


def confirmation(record: dict, rng: random.Random) -> str:
    """The friendly annotator's line after the record."""
    item = record["item"] if record["quantity"] == 1 else dict(QS.ITEMS)[record["item"]]
    return rng.choice(CONFIRMATIONS).format(
        name=record["customer"], time=record["pickup"], qty=record["quantity"], item=item
    )


def chat(user: str, answer: str) -> dict:
    """One conversation row."""
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def sft_row(order: tuple[str, dict, bool], rng: random.Random) -> dict:
    """The record as one of the two annotators wrote it."""
    user, record, chatty = order
    answer = json.dumps(record)
    if rng.random() < CHATTER_RATE[chatty]:
        answer += "\n" + confirmation(record, rng)
    return chat(user, answer)


def wrong_field(record: dict, rng: random.Random) -> dict:
    """The record with one field changed to another plausible value."""
    wrong, field = dict(record), rng.choice(list(record))
    alternatives = {
        "customer": QS.NAMES,
        "item": [singular for singular, _ in QS.ITEMS],
        "quantity": list(range(1, 11)),
        "store": QS.STORES,
        "pickup": [f"{h}:{m}" for h in range(7, 19) for m in ("00", "15", "30", "45")],
    }[field]
    wrong[field] = rng.choice([value for value in alternatives if value != record[field]])
    return wrong


def pair_row(order: tuple[str, dict, bool], rng: random.Random, kind: int) -> dict:
    """A ranked pair: the bare record over the record + a line (kind 0-2) or over one wrong field (kind 3)."""
    user, record, _ = order
    chosen = json.dumps(record)
    rejected = json.dumps(wrong_field(record, rng)) if kind == 3 else chosen + "\n" + confirmation(record, rng)
    return {
        "prompt": [{"role": "user", "content": user}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def unique_orders(rng: random.Random, names_of: list[list[str]], seen: set[str]) -> list[tuple[str, dict, bool]]:
    """One order per entry of `names_of` (the names to draw from), none whose message is in `seen` (updated)."""
    orders = []
    for names in names_of:
        order = make_order(rng, names)
        while order[0] in seen:
            order = make_order(rng, names)
        seen.add(order[0])
        orders.append(order)
    return orders


def main() -> None:
    """Write the five files (see the module docstring)."""
    rng, seen = random.Random(16), set()
    val = unique_orders(rng, [QS.NAMES if i % 4 else QS.HELD_OUT_NAMES for i in range(64)], seen)
    sft = unique_orders(rng, [QS.NAMES] * 640, seen)
    prompts = unique_orders(rng, [QS.NAMES] * 256, seen)
    pairs = unique_orders(rng, [QS.NAMES] * (128 + 32), seen)
    files = {
        "sft_train": [sft_row(order, rng) for order in sft],
        "prompts_train": [chat(user, json.dumps(record)) for user, record, _ in prompts],
        "val": [chat(user, json.dumps(record)) for user, record, _ in val],
        "pairs_seed": [pair_row(order, rng, i % 4) for i, order in enumerate(pairs[:128])],
        "pairs_val": [pair_row(order, rng, i % 4) for i, order in enumerate(pairs[128:])],
    }
    for name, rows in files.items():
        with (HERE / f"{name}.jsonl").open("w") as out:
            out.writelines(json.dumps(row) + "\n" for row in rows)


if __name__ == "__main__":
    main()
