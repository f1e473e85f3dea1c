"""Generate the quickstart dataset: turn a coffee-shop order written in free English into a fixed JSON record.

The base SmolLM2 answers such messages with chat; after a few minutes of LoRA it emits the exact record, which
`lightft generate --prompts_file data/quickstart/val.jsonl` scores by exact match. Deterministic: re-running
rewrites the same files.

    python data/quickstart/make_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

NAMES = [
    "Maria",
    "Ahmed",
    "Lena",
    "Tom",
    "Priya",
    "Kenji",
    "Sofia",
    "Omar",
    "Chloe",
    "Diego",
    "Hannah",
    "Ravi",
    "Yuki",
    "Lucas",
    "Amara",
    "Felix",
    "Ines",
    "Noah",
    "Zara",
    "Mateo",
    "Elif",
    "Sam",
    "Aisha",
    "Jonas",
    "Mei",
    "Pablo",
    "Nora",
    "Ibrahim",
    "Clara",
    "Theo",
    "Ana",
    "Malik",
    "Freya",
    "Hugo",
    "Leila",
    "Oscar",
    "Rosa",
    "Ethan",
    "Sana",
    "Viktor",
]
HELD_OUT_NAMES = ["Beatrix", "Kwame", "Solveig", "Tariq", "Marisol", "Dmitri", "Ingrid", "Rafael"]
ITEMS = [
    ("latte", "lattes"),
    ("espresso", "espressos"),
    ("cappuccino", "cappuccinos"),
    ("flat white", "flat whites"),
    ("mocha", "mochas"),
    ("americano", "americanos"),
    ("chai latte", "chai lattes"),
    ("iced tea", "iced teas"),
    ("hot chocolate", "hot chocolates"),
    ("croissant", "croissants"),
    ("bagel", "bagels"),
    ("muffin", "muffins"),
    ("scone", "scones"),
    ("cinnamon roll", "cinnamon rolls"),
    ("brownie", "brownies"),
    ("cookie", "cookies"),
    ("sandwich", "sandwiches"),
    ("smoothie", "smoothies"),
    ("macchiato", "macchiatos"),
    ("cortado", "cortados"),
]
STORES = [
    "Oak Street",
    "Harbor Road",
    "Main Square",
    "Elm Avenue",
    "Station Plaza",
    "River Walk",
    "Hill Lane",
    "Market Street",
    "Park Corner",
    "Bridge Road",
    "King Street",
    "Lake View",
    "Mill Lane",
    "North Gate",
    "Garden Row",
]
NUMBER_WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
TEMPLATES = [
    "{name} wants {qty} {item} at {store}, pickup at {time}.",
    "Hi, this is {name}. Can I get {qty} {item} from the {store} shop? I'll be there at {time}.",
    "Order for {name}: {qty} {item}, {store} store, ready by {time}.",
    "Please prepare {qty} {item} for {name} at {store} around {time}.",
    "At {time} {name} will collect {qty} {item} from {store}.",
    "{name} here - {qty} {item} please, collecting from {store} at {time}.",
    "Could the {store} branch have {qty} {item} ready for {name} at {time}?",
    "New order! {qty} {item}, name {name}, pickup {time} at {store}.",
]


def make_example(rng: random.Random, names: list[str]) -> dict:
    """One conversation: a free-text order and its JSON record."""
    name, store = rng.choice(names), rng.choice(STORES)
    singular, plural = rng.choice(ITEMS)
    quantity = rng.randint(1, 10)
    spoken = NUMBER_WORDS[quantity - 1] if rng.random() < 0.4 else str(quantity)
    time = f"{rng.randint(7, 18)}:{rng.choice(['00', '15', '30', '45'])}"
    sentence = rng.choice(TEMPLATES).format(
        name=name, qty=spoken, item=singular if quantity == 1 else plural, store=store, time=time
    )
    record = {"customer": name, "item": singular, "quantity": quantity, "store": store, "pickup": time}
    return {
        "messages": [
            {"role": "user", "content": f"Log this order: {sentence}"},
            {"role": "assistant", "content": json.dumps(record)},
        ]
    }


def main() -> None:
    """Write train.jsonl (800 orders) and val.jsonl (100 orders, a quarter with names never seen in training)."""
    here = Path(__file__).parent
    rng = random.Random(0)
    train = [make_example(rng, NAMES) for _ in range(800)]
    val = [make_example(rng, NAMES if i % 4 else HELD_OUT_NAMES) for i in range(100)]
    for name, rows in (("train", train), ("val", val)):
        with (here / f"{name}.jsonl").open("w") as out:
            out.writelines(json.dumps(row) + "\n" for row in rows)


if __name__ == "__main__":
    main()
