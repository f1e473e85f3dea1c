"""What a quantized model costs in quality: validation loss / perplexity and greedy answers beside the float model's.

The validation examples are the run's own (its `config.yaml` names `data.init_args.val`) or `--data`; they are
encoded exactly as training encoded them (chat template, trained tokens), so the loss is the one `val/loss` logged.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from lightft.data.collate import Collator, PromptCollator
from lightft.data.pipeline import encode_prompts, encode_split
from lightft.data.sources import DatasetSpec
from lightft.errors import LightFTError
from lightft.generation import GenerationSettings, generate


@dataclass
class Evaluation:
    """One model's figures on the validation split."""

    loss: float | None = None
    perplexity: float | None = None
    tokens: int = 0
    completions: list[str] = field(default_factory=list)
    exact_match: float | None = None
    tokens_per_second: float | None = None

    def summary(self) -> dict[str, Any]:
        """The figures without the completions (for the report's JSON)."""
        return {k: v for k, v in self.__dict__.items() if k != "completions"}


def run_val_spec(source: str | Path | None) -> DatasetSpec | None:
    """The validation split of the run a checkpoint (or an export of it) came from: `<run>/config.yaml`'s
    `data.init_args.val`; None when there is no such run config.
    """  # noqa: D205
    if source is None:
        return None
    path = Path(source)
    for directory in (path.parent.parent, path.parent, path):  # runs/x/checkpoints/last.ckpt, or a checkpoint dir
        config = directory / "config.yaml"
        if config.is_file():
            val = ((yaml.safe_load(config.read_text()) or {}).get("data") or {}).get("init_args", {}).get("val")
            if val is None:
                return None
            return DatasetSpec(val) if isinstance(val, str) else DatasetSpec(**val)
    return None


@dataclass
class ValData:
    """Encoded validation examples (for the loss and calibration) and generation prompts with their answers."""

    examples: list[dict[str, Any]]
    prompts: list[dict[str, Any]]
    pad_id: int
    evaluated: int  # the first `evaluated` examples are the loss's; the rest are for calibration

    @classmethod
    def load(
        cls, spec: DatasetSpec, key: str, tokenizer: Any, max_length: int, examples: int, prompts: int, extra: int = 0
    ) -> ValData:
        """Encode `examples` (+ `extra` for calibration) examples and `prompts` prompts of `spec`; an empty split is
        an error.
        """  # noqa: D205
        encoded, _ = encode_split(spec, key, tokenizer, max_length, "right")
        rows = [encoded[i] for i in range(min(examples + extra, len(encoded)))]
        prompt_rows = encode_prompts(spec, key, tokenizer, max_length) if prompts else []
        items = [{**prompt_rows[i], "index": i} for i in range(min(prompts, len(prompt_rows)))]
        if not rows:
            raise LightFTError(f"{key}: the validation split ({spec.path}) holds no examples; give a file with some.")
        return cls(rows, items, tokenizer.pad_token_id, min(examples, len(rows)))

    def batches(self, batch_size: int) -> list[Any]:
        """Right-padded token batches of the evaluated examples."""
        return _batches(self.examples[: self.evaluated], batch_size, self.pad_id)

    def calibration_batches(self, batch_size: int, count: int) -> tuple[list[Any], bool]:
        """Batches of `count` calibration examples: those after the evaluated ones, else (too few) the first ones;
        and whether they overlap the evaluated examples.
        """  # noqa: D205
        held_out = self.examples[self.evaluated :]
        rows, overlap = (held_out, False) if len(held_out) >= count else (self.examples, True)
        return _batches(rows[:count], batch_size, self.pad_id), overlap


def _batches(rows: list[dict[str, Any]], batch_size: int, pad_id: int) -> list[Any]:
    collate = Collator(pad_id)
    return [collate(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]


@torch.no_grad()
def evaluate(model: nn.Module, tokenizer: Any, data: ValData, batch_size: int, max_new_tokens: int) -> Evaluation:
    """Token-weighted validation loss over the trained tokens, and greedy completions of the prompts."""
    loss, count = validation_loss(model, data.batches(batch_size))
    result = Evaluation(loss=loss, perplexity=math.exp(loss), tokens=count)
    if data.prompts:
        _generate(model, tokenizer, data, batch_size, max_new_tokens, result)
    return result


@torch.no_grad()
def validation_loss(model: nn.Module, batches: list[Any]) -> tuple[float, int]:
    """Mean cross-entropy over the trained tokens (`labels` != -100) of `batches`, and how many tokens that is."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in batches:
        logits = model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device)).logits
        labels = batch.labels[:, 1:].to(device)
        losses = nn.functional.cross_entropy(
            logits[:, :-1].float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum"
        )
        total, count = total + losses.item(), count + int((labels != -100).sum())
    return total / max(count, 1), count


def _generate(
    model: nn.Module, tokenizer: Any, data: ValData, batch_size: int, max_new_tokens: int, result: Evaluation
) -> None:
    device = next(model.parameters()).device
    collate, settings = PromptCollator(data.pad_id), GenerationSettings(max_new_tokens=max_new_tokens)
    generated, start = 0, time.perf_counter()
    for i in range(0, len(data.prompts), batch_size):
        batch = collate(data.prompts[i : i + batch_size]).to(device)
        texts = generate(model, tokenizer, batch.input_ids, batch.attention_mask, settings)
        result.completions += [text.strip() for text in texts]
        generated += sum(len(tokenizer(text, add_special_tokens=False).input_ids) + 1 for text in texts)
    result.tokens_per_second = generated / (time.perf_counter() - start)
    references = [item["reference"].strip() for item in data.prompts]
    if any(references):
        hits = sum(c == r for c, r in zip(result.completions, references, strict=True) if r)
        result.exact_match = hits / sum(1 for r in references if r)


def agreement(a: Evaluation, b: Evaluation) -> float | None:
    """Share of prompts on which two models' greedy completions are identical."""
    if not a.completions:
        return None
    return sum(x == y for x, y in zip(a.completions, b.completions, strict=True)) / len(a.completions)


def table(report: dict[str, Any]) -> str:
    """The report as a few aligned lines."""
    before, after = report["float"], report["quantized"]

    def cell(value: Any, spec: str = ".4f") -> str:
        return "-" if value is None else format(value, spec)

    rows = [
        ("size (MB)", cell(report["size_mb"]["float"], ".1f"), cell(report["size_mb"]["quantized"], ".1f")),
        ("val loss", cell(before.get("loss")), cell(after.get("loss"))),
        ("val perplexity", cell(before.get("perplexity"), ".3f"), cell(after.get("perplexity"), ".3f")),
        ("exact match", cell(before.get("exact_match"), ".3f"), cell(after.get("exact_match"), ".3f")),
        (
            "tokens/s (greedy)",
            cell(before.get("tokens_per_second"), ".1f"),
            cell(after.get("tokens_per_second"), ".1f"),
        ),
    ]
    lines = [f"{report['scheme']}  ({report['out']})", f"  {'':<20}{'float':>12}{'quantized':>12}"]
    lines += [f"  {name:<20}{a:>12}{b:>12}" for name, a, b in rows]
    if report.get("greedy_agreement") is not None:
        lines.append(f"  greedy agreement with the float model: {report['greedy_agreement']:.3f} "
                     f"on {report['prompts']} held-out prompts")  # fmt: skip
    return "\n".join(lines)
