"""Reference metrics of generated answers: exact match, ROUGE-L, BLEU, chrF, JSON validity and field match.

Text metrics come from torchmetrics' text package; the JSON ones apply when every reference is a JSON object.

Per-example figures go into the predictions file; the summary holds the corpus figures (BLEU and chrF are corpus
statistics, not means of sentence scores; ROUGE-L is the mean of the per-example F-measures, as torchmetrics does).
"""

from __future__ import annotations

import json
from typing import Any

from torchmetrics.functional.text import bleu_score, chrf_score
from torchmetrics.functional.text.rouge import rouge_score

REFERENCE_METRICS = ("exact_match", "rouge_l", "bleu", "chrf")
JSON_METRICS = ("json_valid", "json_exact", "field_match")


def parse_object(text: str) -> dict[str, Any] | None:
    """`text` (surrounding whitespace aside) as one JSON object, else None: extra text around the object fails."""
    try:
        value = json.loads(text.strip())
    except (json.JSONDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def field_match(completion: str, reference: str) -> float:
    """Share of the reference object's fields the completion's object holds with equal values (0 if not an object)."""
    got, want = parse_object(completion), parse_object(reference)
    if got is None or not want:
        return 0.0
    return sum(k in got and got[k] == v for k, v in want.items()) / len(want)


def json_references(references: list[str]) -> bool:
    """Whether every reference is a JSON object (then the JSON metrics apply)."""
    return bool(references) and all(parse_object(r) is not None for r in references)


def per_example(completion: str, reference: str, with_json: bool) -> dict[str, float]:
    """One answer's figures against its reference."""
    row = {
        "exact_match": float(completion.strip() == reference.strip()),
        "rouge_l": float(rouge_score(completion, reference, rouge_keys="rougeL")["rougeL_fmeasure"]),
    }
    if with_json:
        got = parse_object(completion)
        row["json_valid"] = float(got is not None)
        row["json_exact"] = float(got is not None and got == parse_object(reference))
        row["field_match"] = field_match(completion, reference)
    return row


def corpus(completions: list[str], references: list[str], rows: list[dict[str, float]]) -> dict[str, float]:
    """Summary figures: means of the per-example ones, corpus BLEU (4-gram, no smoothing) and chrF (chrF2)."""
    summary = {name: sum(r[name] for r in rows) / len(rows) for name in rows[0]}
    targets = [[r] for r in references]
    summary["bleu"] = float(bleu_score(completions, targets))
    summary["chrf"] = float(chrf_score(completions, targets))
    return summary
