"""SampleGenerations: what the model writes for a few fixed validation prompts, while it trains.

At each validation of a fit (or every `every_n_steps` optimizer steps) the model decodes the first `prompts`
validation examples greedily, so one run's samples compare step to step; rank 0 appends them to
`<run dir>/samples.jsonl` and logs them as a table (tag `samples`) to the logger: TensorBoard text, MLflow
`samples/step_<N>.md`, a W&B table. A reward model (no LM head) logs its scores of the first validation pairs instead;
PPO/GRPO also log the first `rollouts` responses of the latest rollout with their rewards (tag `rollouts`).
`--samples.prompts 0` turns it off.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from lightft.data.collate import PairCollator, PromptCollator
from lightft.data.templates import IGNORE_INDEX
from lightft.errors import LightFTError
from lightft.generation import GenerationSettings, generate
from lightft.loggers import log_table, run_directory
from lightft.strategies import gathered_for_generation, strategy_kind, zero_stage

FILENAME = "samples.jsonl"
KEY = "samples"


class SampleGenerations(pl.Callback):
    """Generate for K fixed validation prompts during `fit`; log them to `<run dir>/samples.jsonl` and the loggers.

    The prompts are the first `prompts` examples of the validation split as the data module encoded them, cut
    before their first trained token (the chat template's assistant header included); the reference is that first
    trained span. Without validation data the first training examples are used. Every rank decodes the same prompts
    (a sharded model's forward needs all of them; FSDP2 gathers the weights once), rank 0 writes. Not under FSDP (v1)
    or DeepSpeed ZeRO-3: there the model is sharded outside the training step and nothing is generated (a warning).

    Args:
        every_n_steps: Sample every N optimizer steps; None: at the end of each validation of the fit (the sanity
            check excluded).
        prompts: K, how many fixed prompts (a reward model: validation pairs it scores); 0 turns the callback off.
        max_new_tokens: Longest sample in tokens (greedy decoding).
        rollouts: PPO/GRPO: responses of the latest rollout logged with their rewards at each firing (0: none).
    """

    def __init__(
        self, every_n_steps: int | None = None, prompts: int = 2, max_new_tokens: int = 64, rollouts: int = 2
    ) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise LightFTError(f"{KEY}.every_n_steps: must be >= 1 (or null: at each validation), got {every_n_steps}.")
        if prompts < 0 or rollouts < 0 or max_new_tokens < 1:
            raise LightFTError(f"{KEY}: prompts and rollouts must be >= 0 and max_new_tokens >= 1.")
        self.every_n_steps, self.prompts = every_n_steps, prompts
        self.max_new_tokens, self.rollouts = max_new_tokens, rollouts
        self.path: Path | None = None  # set for a fit with the callback on
        self._items: list[dict[str, Any]] | None = None  # the fixed examples, read once per fit
        self._generates = True
        self._last_step = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Where the file goes (every rank: `trainer.log_dir` is collective) and whether the strategy can generate."""
        if stage != "fit" or not self.prompts:
            return
        self.path = run_directory(trainer) / FILENAME
        self._items = None
        reason = _unsupported(trainer.strategy)
        self._generates = reason is None
        if reason:
            rank_zero_warn(f"{KEY}: no samples under {reason}, whose weights are sharded outside the training step; "
                           "use lightft.strategies.FSDP2, or --samples.prompts 0 to silence this.")  # fmt: skip

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A fresh fit starts a new file; a resumed one (`ckpt_path`) appends to it."""
        self._last_step = trainer.global_step
        if self.path is not None and trainer.is_global_zero and trainer.ckpt_path is None:
            self.path.unlink(missing_ok=True)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """With `every_n_steps`: sample when the optimizer steps crossed a multiple of N (PPO takes several a batch)."""
        if self.path is None or self.every_n_steps is None:
            return
        step, last = trainer.global_step, self._last_step
        self._last_step = step
        if step // self.every_n_steps > last // self.every_n_steps:
            self.record(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Without `every_n_steps`: sample after each validation of the fit."""
        fitting = trainer.state.fn == "fit" and not trainer.sanity_checking
        if self.path is not None and self.every_n_steps is None and fitting:
            self.record(trainer, pl_module)

    def record(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Sample (every rank), then append the records and log the tables (rank 0)."""
        if self._items is None:
            self._items = fixed_items(trainer.datamodule, self.prompts)
        samples = self._samples(trainer, pl_module) if self._generates and self._items else []
        rollout_records = getattr(pl_module, "rollout_records", None)
        rollouts = rollout_records(self.rollouts) if self.rollouts and callable(rollout_records) else []
        if trainer.is_global_zero and (samples or rollouts):
            where = {"step": trainer.global_step, "epoch": trainer.current_epoch}
            samples = [{**where, "kind": _kind(s), "index": i, **s} for i, s in enumerate(samples)]
            rollouts = [{**where, "kind": "rollout", "index": i, **r} for i, r in enumerate(rollouts)]
            self._write(trainer, {"samples": samples, "rollouts": rollouts})

    def _write(self, trainer: pl.Trainer, tables: dict[str, list[dict[str, Any]]]) -> None:
        """Append every record to the file; each non-empty table to every logger under its tag."""
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as out:
            out.writelines(json.dumps(row, ensure_ascii=False) + "\n" for rows in tables.values() for row in rows)
        for logger in trainer.loggers:
            for tag, rows in tables.items():
                if rows:
                    log_table(logger, tag, rows, markdown_table(rows), trainer.global_step)

    def _samples(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[dict[str, Any]]:
        model, tokenizer = getattr(pl_module, "model", None), getattr(pl_module, "tokenizer", None)
        if model is None or tokenizer is None:
            return []
        assert self._items is not None
        describe = getattr(pl_module, "describe", None)
        reward_model = callable(describe) and describe().head == "reward"
        with eval_mode(model), torch.no_grad(), trainer.precision_plugin.forward_context():
            if reward_model:
                return scores(pl_module, tokenizer, self._items)
            return generations(model, tokenizer, self._items, self.max_new_tokens, pl_module.device)


def _unsupported(strategy: Any) -> str | None:
    kind = strategy_kind(strategy)
    if kind == "fsdp":
        return "FSDP (v1)"
    return "DeepSpeed ZeRO-3" if kind == "deepspeed" and zero_stage(strategy) == 3 else None


def _kind(sample: dict[str, Any]) -> str:
    return "score" if "margin" in sample else "sample"


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Every submodule of `model` in eval mode (dropout off, KV cache on), each put back as it was."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training


def fixed_items(datamodule: Any, k: int) -> list[dict[str, Any]]:
    """The first `k` encoded rows of the data module's validation split (else its training split), each with its
    `index`; empty for a data module without lightft's encoded splits.
    """  # noqa: D205
    datasets = getattr(datamodule, "datasets", None) or {}
    dataset = datasets.get("val") if "val" in datasets else datasets.get("train")
    rows = getattr(dataset, "rows", None)
    if rows is None:
        return []
    return [{**rows[i], "index": i} for i in range(min(k, len(rows)))]


def split_prompt(ids: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
    """(prompt ids: those before the first trained token, the first contiguous run of trained ids after them)."""
    start = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(ids))
    end = next((i for i in range(start, len(ids)) if labels[i] == IGNORE_INDEX), len(ids))
    return ids[:start], ids[start:end]


def prompt_item(row: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    """A `PromptCollator` item (`prompt_ids`, `reference`, `index`) from an encoded row of any lightft split."""
    if "prompt_ids" in row:  # prompt data (PPO/GRPO): already a generation prompt
        return {"prompt_ids": row["prompt_ids"], "reference": row["reference"], "index": row["index"]}
    if "chosen_ids" in row:  # preference pairs: the chosen answer is the reference
        prompt, answer = split_prompt(row["chosen_ids"], row["chosen_labels"])
    else:
        prompt, answer = split_prompt(row["input_ids"], row["labels"])
    return {"prompt_ids": prompt, "reference": _text(tokenizer, answer), "index": row["index"]}


def _text(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True)


def generations(
    model: nn.Module, tokenizer: Any, rows: list[dict[str, Any]], max_new_tokens: int, device: torch.device
) -> list[dict[str, Any]]:
    """Greedy completions of the rows' prompts: `{prompt, completion, reference}` each."""
    items = [prompt_item(row, tokenizer) for row in rows]
    batch = PromptCollator(tokenizer.pad_token_id)(items).to(device)
    with gathered_for_generation(model):  # FSDP2: gather once for the whole of `generate`
        texts = generate(model, tokenizer, batch.input_ids, batch.attention_mask, GenerationSettings(max_new_tokens))
    return [
        {"prompt": tokenizer.decode(item["prompt_ids"]), "completion": text, "reference": item["reference"]}
        for item, text in zip(items, texts, strict=True)
    ]


def scores(module: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A reward model's scores of the rows' pairs and their texts (`chosen_score`, `rejected_score`, `margin`)."""
    batch = PairCollator(tokenizer.pad_token_id)(rows).to(module.device)
    chosen, rejected = module(batch).chunk(2)  # (K,), (K,)
    out = []
    for row, good, bad in zip(rows, chosen.tolist(), rejected.tolist(), strict=True):
        prompt, chosen_ids = split_prompt(row["chosen_ids"], row["chosen_labels"])
        rejected_ids = split_prompt(row["rejected_ids"], row["rejected_labels"])[1]
        texts = {"prompt": tokenizer.decode(prompt), "chosen": _text(tokenizer, chosen_ids),
                 "rejected": _text(tokenizer, rejected_ids)}  # fmt: skip
        out.append({**texts, "chosen_score": good, "rejected_score": bad, "margin": good - bad})
    return out


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (TensorBoard's text plugin renders it), without the step and epoch columns."""
    columns = [c for c in rows[0] if c not in ("step", "epoch", "kind")]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\r", "").replace("\n", "<br>")
