"""`generate_pairs`: new preference pairs from the current policy, ranked by a reward standing in for human raters.

For each prompt the policy samples K completions; the reward (a rule, or a reward model) scores them; the best and
the worst become a (chosen, rejected) pair. Prompts whose K samples all score the same carry no preference and are
skipped. This is the "new feedback" step of iterative (online) DPO: the next DPO round trains on these pairs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lightft.data.collate import PromptCollator
from lightft.data.formats import prompt_only, to_example
from lightft.data.pipeline import PROMPT_FORMATS, formatted_rows
from lightft.data.sources import DatasetSpec
from lightft.data.templates import ExampleEncoder
from lightft.errors import LightFTError
from lightft.generation import GenerationSettings, generate
from lightft.rl.rewards import RewardFunction, score


@dataclass
class PairStats:
    """What a `generate_pairs` run produced."""

    prompts: int
    pairs: int
    mean_reward: float
    best_reward: float
    satisfied: float  # share of samples with the best possible score of its prompt group (the max over all samples)

    def summary(self) -> dict[str, Any]:
        """The figures as a plain mapping (for the stage record)."""
        return dict(self.__dict__)


def prompt_items(spec: DatasetSpec, key: str, tokenizer: Any, limit: int | None) -> list[dict[str, Any]]:
    """Per prompt row: its prompt (messages, or text without a chat template), ids and reference answer."""
    rows, fmt, where = formatted_rows(spec, key, PROMPT_FORMATS)
    encoder = ExampleEncoder(tokenizer, 1 << 30, "left")
    chat = bool(tokenizer.chat_template)
    items = []
    for i in range(len(rows) if limit is None else min(limit, len(rows))):
        example = to_example(rows[i], fmt, chat, where(i))
        prompt = prompt_only(example)
        if example.conversational:
            reference = "\n".join(example.messages[t]["content"] for t in example.trained_turns)
            text: Any = prompt.messages
        else:
            reference = "".join(t for t, trained in example.segments if trained)
            text = "".join(t for t, _ in prompt.segments)
        items.append({"prompt": text, "prompt_ids": encoder.encode_prompt(prompt), "reference": reference, "index": i})
    if not items:
        raise LightFTError(f"{key}: '{spec.path}' holds no prompts; give a file with some.")
    return items


@torch.no_grad()
def generate_pairs(
    model: Any,
    tokenizer: Any,
    items: list[dict[str, Any]],
    reward: RewardFunction,
    out: Path,
    samples: int,
    settings: GenerationSettings,
    batch_size: int = 8,
) -> PairStats:
    """Sample `samples` completions per prompt, rank them by `reward`, write best-vs-worst pairs to `out` (JSONL)."""
    device = next(model.parameters()).device
    collate = PromptCollator(tokenizer.pad_token_id)
    expanded = [item for item in items for _ in range(samples)]
    completions: list[str] = []
    for i in range(0, len(expanded), batch_size):
        batch = collate(expanded[i : i + batch_size]).to(device)
        completions += [t.strip() for t in generate(model, tokenizer, batch.input_ids, batch.attention_mask, settings)]
    rendered = [tokenizer.decode(item["prompt_ids"], skip_special_tokens=False) for item in expanded]
    scores = score(reward, rendered, completions, [item["reference"] for item in expanded]).view(len(items), samples)
    rows = []
    for index, item in enumerate(items):
        group = scores[index]
        best, worst = int(group.argmax()), int(group.argmin())
        chosen, rejected = completions[index * samples + best], completions[index * samples + worst]
        if group[best] == group[worst] or chosen == rejected:
            continue
        rows.append(_pair(item["prompt"], chosen, rejected, float(group[best]), float(group[worst])))
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    partial.replace(out)
    top = float(scores.max())
    return PairStats(len(items), len(rows), float(scores.mean()), top, float((scores == top).float().mean()))


def _pair(prompt: Any, chosen: str, rejected: str, chosen_score: float, rejected_score: float) -> dict[str, Any]:
    if isinstance(prompt, list):  # a conversation: the answers are assistant turns
        sides: tuple[Any, Any] = (
            [{"role": "assistant", "content": chosen}],
            [{"role": "assistant", "content": rejected}],
        )
    else:
        sides = (chosen, rejected)
    return {"prompt": prompt, "chosen": sides[0], "rejected": sides[1],
            "score_chosen": chosen_score, "score_rejected": rejected_score}  # fmt: skip
