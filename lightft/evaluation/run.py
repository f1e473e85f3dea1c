"""One model on one held-out file: batched generation, reference metrics, loss, rewards and KL to a reference model.

The prompts are the file's examples without their trained turns, rendered exactly as training renders them (chat
template); the reference answer of an example is its trained text. Validation loss / perplexity are over the trained
tokens of the same examples, as `val/loss` logs them. The KL to a reference model (e.g. the SFT model, for a
preference-tuned policy) is exact per position, summed over the tokens of the model's own answer:
sum_t KL(p_model(. | x, y<t) || p_reference(. | x, y<t)), with y the answer (+ end of sequence) re-tokenized.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lightft.data.collate import Collator, PromptCollator
from lightft.data.pipeline import encode_prompts, encode_split
from lightft.data.sources import DatasetSpec
from lightft.errors import LightFTError
from lightft.evaluation import metrics
from lightft.generation import GenerationSettings, generate
from lightft.quantization.report import validation_loss
from lightft.rl.rewards import RewardFunction, RewardModelScorer, score

MetricName = str  # one of metrics.REFERENCE_METRICS + metrics.JSON_METRICS + ("loss",)


@dataclass(frozen=True)
class EvalSettings:
    """How to evaluate.

    Args:
        limit: Evaluate the first N examples (None: all).
        batch_size: Prompts generated (and examples scored) together.
        max_prompt_length: The generation budget for a prompt in tokens; a longer prompt is an error, not cut.
        generation: Decoding settings (greedy by default).
        metrics: Reference metrics the caller requires (an error when the file has no answers); None: every
            metric that applies.
        key: The option or config key that named the data (for error messages).
        samples: Completions per prompt (with `generation.do_sample`): every figure except the loss is then a mean
            over all prompts' samples, i.e. a figure of the sampled policy rather than of one decode.
    """

    limit: int | None = None
    batch_size: int = 8
    max_prompt_length: int = 1024
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    metrics: tuple[str, ...] | None = None
    key: str = "--data"
    samples: int = 1

    def __post_init__(self) -> None:
        if self.samples < 1 or (self.samples > 1 and not self.generation.do_sample):
            raise LightFTError(f"samples {self.samples}: give 1, or more than 1 with sampling on (do_sample true).")


@dataclass
class ModelReport:
    """Per-example rows (prompt, completion, reference and each figure) and the summary figures."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any]


def load_prompts(spec: DatasetSpec, tokenizer: Any, settings: EvalSettings) -> list[dict[str, Any]]:
    """Encoded prompts with their reference answers; a prompt over the budget is an error naming its row."""
    rows = encode_prompts(spec, settings.key, tokenizer, max_length=1 << 30)
    count = len(rows) if settings.limit is None else min(settings.limit, len(rows))
    if count == 0:
        raise LightFTError(f"{settings.key}: '{spec.path}' holds no examples; give a file with some.")
    items = []
    for i in range(count):
        row = rows[i]
        if len(row["prompt_ids"]) > settings.max_prompt_length:
            raise LightFTError(
                f"{settings.key}: '{spec.path}' row {i}: the prompt is {len(row['prompt_ids'])} tokens, over the "
                f"generation budget --max_prompt_length {settings.max_prompt_length}; raise it or shorten the prompt."
            )
        items.append({"prompt_ids": row["prompt_ids"], "reference": row["reference"], "index": i})
    wanted = [m for m in settings.metrics or () if m in metrics.REFERENCE_METRICS + metrics.JSON_METRICS + ("loss",)]
    missing = next((item["index"] for item in items if not item["reference"].strip()), None)
    if wanted and missing is not None:
        raise LightFTError(
            f"{settings.key}: '{spec.path}' row {missing} has no reference answer, but --metrics asks for "
            f"{', '.join(wanted)}; give a file with answers or drop those metrics."
        )
    return items


@torch.no_grad()
def evaluate_model(
    network: nn.Module,
    tokenizer: Any,
    spec: DatasetSpec,
    settings: EvalSettings,
    reward: RewardFunction | None = None,
    reward_model: RewardModelScorer | None = None,
    reference: nn.Module | None = None,
) -> ModelReport:
    """Generate for the held-out prompts and compute every figure that applies (see the module's docstring)."""
    examples = load_prompts(spec, tokenizer, settings)
    items = [{**item, "sample": k} for item in examples for k in range(settings.samples)]
    completions, seconds, new_tokens = _complete(network, tokenizer, items, settings)
    prompts = [tokenizer.decode(item["prompt_ids"], skip_special_tokens=False) for item in items]
    references = [item["reference"] for item in items]
    rows = [
        {"index": item["index"], "prompt": prompt, "completion": completion, "reference": ref}
        | ({"sample": item["sample"]} if settings.samples > 1 else {})
        for item, prompt, completion, ref in zip(items, prompts, completions, references, strict=True)
    ]
    summary: dict[str, Any] = {"examples": len(examples), "tokens_per_second": new_tokens / max(seconds, 1e-9)}
    if settings.samples > 1:
        summary["samples"] = settings.samples
    if all(r.strip() for r in references):
        with_json = metrics.json_references(references)
        scores = [metrics.per_example(c, r, with_json) for c, r in zip(completions, references, strict=True)]
        for row, figures in zip(rows, scores, strict=True):
            row.update(figures)
        summary.update(metrics.corpus(completions, references, scores))
        summary.update(_loss(network, tokenizer, spec, settings, len(examples)))
    if reward is not None:
        _add(rows, summary, "reward", score(reward, prompts, completions, references).tolist())
    if reward_model is not None:
        device = next(network.parameters()).device
        values = score(reward_model.to(device), prompts, completions, references).tolist()
        _add(rows, summary, "reward_model", values)
    if reference is not None:
        _add(rows, summary, "kl_to_reference", _kl(network, reference, tokenizer, items, completions, settings))
    return ModelReport(rows, summary)


def _add(rows: list[dict[str, Any]], summary: dict[str, Any], name: str, values: list[float]) -> None:
    for row, value in zip(rows, values, strict=True):
        row[name] = value
    summary[name] = sum(values) / len(values)


def _complete(
    network: nn.Module, tokenizer: Any, items: list[dict[str, Any]], settings: EvalSettings
) -> tuple[list[str], float, int]:
    """Completions (stripped), generation seconds and the number of generated tokens."""
    device = next(network.parameters()).device
    collate = PromptCollator(tokenizer.pad_token_id)
    completions, new_tokens, start = [], 0, time.perf_counter()
    for i in range(0, len(items), settings.batch_size):
        batch = collate(items[i : i + settings.batch_size]).to(device)
        texts = generate(network, tokenizer, batch.input_ids, batch.attention_mask, settings.generation)
        completions += [text.strip() for text in texts]
        new_tokens += sum(len(tokenizer(text, add_special_tokens=False).input_ids) + 1 for text in texts)
    return completions, time.perf_counter() - start, new_tokens


def _loss(network: nn.Module, tokenizer: Any, spec: DatasetSpec, settings: EvalSettings, count: int) -> dict:
    """Validation loss and perplexity over the trained tokens of the evaluated examples."""
    max_length = settings.max_prompt_length + settings.generation.max_new_tokens
    encoded, _ = encode_split(spec, settings.key, tokenizer, max_length, "right")
    rows = [encoded[i] for i in range(min(count, len(encoded)))]
    if not rows:
        return {}
    collate = Collator(tokenizer.pad_token_id)
    batches = [collate(rows[i : i + settings.batch_size]) for i in range(0, len(rows), settings.batch_size)]
    loss, _ = validation_loss(network, batches)
    return {"loss": loss, "perplexity": math.exp(min(loss, 80.0))}


def _kl(
    network: nn.Module,
    reference: nn.Module,
    tokenizer: Any,
    items: list[dict[str, Any]],
    completions: list[str],
    settings: EvalSettings,
) -> list[float]:
    """Per example: the summed per-position KL(model || reference) over the model's answer (+ end of sequence)."""
    sequences = []
    for item, text in zip(items, completions, strict=True):
        answer = tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        sequences.append((list(item["prompt_ids"]), answer))
    values = []
    for i in range(0, len(sequences), settings.batch_size):
        values += sequence_kl(network, reference, sequences[i : i + settings.batch_size], tokenizer.pad_token_id)
    return values


def sequence_kl(
    model: nn.Module, reference: nn.Module, sequences: list[tuple[list[int], list[int]]], pad_id: int
) -> list[float]:
    """Sum over answer positions of KL(model || reference), for (prompt ids, answer ids) pairs, right-padded."""
    length = max(len(p) + len(a) for p, a in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    answer = torch.zeros(len(sequences), length - 1, dtype=torch.bool)  # position t predicts token t + 1
    for row, (prompt, completion) in enumerate(sequences):
        ids[row, : len(prompt) + len(completion)] = torch.tensor(prompt + completion)
        mask[row, : len(prompt) + len(completion)] = 1
        answer[row, len(prompt) - 1 : len(prompt) + len(completion) - 1] = True
    logps = []
    for network in (model, reference):
        device = next(network.parameters()).device
        logits = network(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, :-1]
        logps.append(torch.log_softmax(logits.float(), dim=-1).cpu())
    per_position = (logps[0].exp() * (logps[0] - logps[1])).sum(-1)
    return (per_position * answer).sum(-1).tolist()
