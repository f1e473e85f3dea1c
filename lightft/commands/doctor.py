"""`lightft doctor --config X.yaml`: a dry run that finds what would spoil a training run, before it starts.

Reads `lightft fit`'s arguments, loads the tokenizer and tokenizes the data (no weights, no training) and reports:

- tokenizer: the pad token is not EOS (or padding would hide EOS from the loss), one BOS at the start of an example
  (a template that writes BOS and a tokenizer that adds another trains on a doubled BOS), EOS among the trained
  tokens of every complete example (else the model never learns to stop), a chat template for chat data;
- data: per split, examples kept, truncated, dropped as too long, dropped for training on zero tokens;
- batches: examples per micro-batch and per optimizer step, optimizer steps per epoch (and, with packing, the
  unpacked run's steps: a warning when `batch_size_unit: rows` makes an epoch take fewer);
- a few examples rendered with the trained tokens marked (`[[...]]`, green on a terminal);
- the config-time compatibility checks (method x PEFT x data x strategy x accelerator), and that
  `--early_stopping.monitor` / `--best.monitor` name a metric the run's validation logs;
- the memory estimate (`lightft estimate`).

Problems are errors (exit status 1) or warnings; a config that cannot be parsed exits with status 2 like `fit`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from jsonargparse.typing import NonNegativeInt

from lightft.commands.estimate import plan_for
from lightft.errors import LightFTError
from lightft.memory import estimate

GREEN, RESET = "\033[32m", "\033[0m"


@dataclass
class Report:
    """What the doctor found."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def check(self, ok: bool, good: str, bad: str, error: bool = True) -> None:
        """One check: `ok` prints `good`; otherwise `bad` becomes an error (or a warning)."""
        if ok:
            self.lines.append(f"  ok      {good}")
        else:
            (self.errors if error else self.warnings).append(bad)
            self.lines.append(f"  {'ERROR' if error else 'warning':7} {bad}")

    def section(self, title: str) -> None:
        """A heading."""
        self.lines.append(f"\n{title}")


def add_arguments(parser: Any) -> None:
    """`lightft doctor`'s own options, beside `lightft fit`'s."""
    parser.add_argument(
        "--examples", type=NonNegativeInt, default=2, help="Training examples to show, their trained tokens marked."
    )


def main(args: list[str]) -> None:
    """`lightft doctor --config X.yaml [--examples N]`: report, then exit 1 on any error."""
    from lightft.commands.fit import ParseOnlyCLI

    cli = ParseOnlyCLI(args, "doctor", add_arguments, __doc__)
    monitored = [cli.config_init.get(group) for group in ("early_stopping", "best")]  # `lightft fit`'s callbacks
    report = diagnose(
        cli.model, cli.datamodule, cli.config_init["trainer"], cli.config.examples, sys.stdout.isatty(),
        [callback for callback in monitored if callback is not None],
    )  # fmt: skip
    print("\n".join(report.lines))
    print(f"\nlightft doctor: {len(report.errors)} error(s), {len(report.warnings)} warning(s)")
    for message in report.errors:
        print(f"  error: {message}")
    if report.errors:
        sys.exit(1)


def diagnose(
    module: Any,
    data: Any,
    trainer: dict[str, Any],
    n_examples: int = 2,
    color: bool = False,
    callbacks: Sequence[Any] = (),
) -> Report:
    """Every check on a parsed run (module, data module, trainer arguments, the early-stopping / best callbacks)."""
    report = Report()
    # the Plan and the meta-device model, built once for the strategy check and the memory estimate
    planned = _guarded(report, "configuration", lambda: plan_for(module, data, trainer))
    report.section("compatibility")
    if planned is not None:
        compatibility(report, module, data, planned[0])
    monitors(report, module, data, trainer, callbacks)
    report.section("tokenizer")
    tokenizer = _guarded(report, "tokenizer", data.load_tokenizer)
    if tokenizer is not None:
        tokenizer_checks(report, tokenizer)
        report.section("data")
        encoded = data_checks(report, data, tokenizer)
        if encoded is not None:
            batch_checks(report, data, trainer)
            report.section(f"first {n_examples} training example(s), trained tokens marked")
            render(report, encoded, tokenizer, n_examples, color)
    report.section("memory")
    if planned is not None:
        plan, model, quantization = planned
        result = _guarded(report, "memory estimate", lambda: estimate(model, plan, quantization))
        if result is not None:
            report.lines += ["  " + line for line in result.table().splitlines()]
    return report


def _guarded(report: Report, what: str, fn: Any) -> Any:
    try:
        return fn()
    except LightFTError as err:
        report.check(False, "", str(err))
    except Exception as err:  # a library's own error: still a finding, not a crash of the doctor
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        report.check(False, "", f"{what}: {type(err).__name__}: {first}")
    return None


def compatibility(report: Report, module: Any, data: Any, plan: Any) -> None:
    """The config-time checks `lightft fit` runs, with the strategy judged from the config (no Trainer built)."""
    from lightft.compat import check_compatibility, strategy_conflict

    def checks() -> bool:
        check_compatibility(module, data, None)
        stage = plan.zero_stage if plan.strategy == "deepspeed" else None
        method = module.describe()
        conflict = strategy_conflict(method, module.peft, plan.strategy, stage, plan.accelerator, plan.precision)
        if conflict:
            raise LightFTError(conflict)
        return True

    if _guarded(report, "compatibility", checks):
        method = module.describe()
        report.check(True, f"{type(module).__name__} (trains on {method.batch.what}; reference: {method.reference}), "
                           f"{type(module.peft).__name__}, data, checkpointing, strategy and accelerator fit together",
                     "")  # fmt: skip


def monitors(report: Report, module: Any, data: Any, trainer: dict[str, Any], callbacks: Sequence[Any]) -> None:
    """`lightft fit`'s monitor check: `--early_stopping.monitor` / `--best.monitor` name a metric validation logs."""
    from lightft.callbacks.monitored import check_monitors

    named = [callback.checked_monitor for callback in callbacks if getattr(callback, "checked_monitor", None)]
    if not named:
        return
    limit = trainer.get("limit_val_batches")
    view = SimpleNamespace(limit_val_batches=1.0 if limit is None else limit, callbacks=list(callbacks))

    def check() -> bool:
        check_monitors(module, data, view)  # reads only the trainer's callbacks and limit_val_batches
        return True

    if _guarded(report, "monitors", check):
        report.check(True, "monitored by validation: " + ", ".join(f"{flag} {key}" for flag, key in named), "")


def tokenizer_checks(report: Report, tokenizer: Any) -> None:
    """Pad vs EOS, a chat template."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    report.check(
        pad is not None and pad != eos,
        f"pad token {tokenizer.pad_token!r} (id {pad}) is not EOS {tokenizer.eos_token!r} (id {eos})",
        f"tokenizer: the pad token is EOS (id {eos}): padding masks would hide EOS from the loss; give the "
        "tokenizer a distinct pad token",
    )
    report.check(
        bool(tokenizer.chat_template),
        "chat template present",
        "tokenizer: no chat template: chat (messages) data cannot be rendered; set model.init_args.model.chat_template",
        error=False,
    )


def data_checks(report: Report, data: Any, tokenizer: Any) -> Any:
    """Encode every configured split; statistics, BOS and EOS checks. Returns the encoded training split."""
    from lightft.losses.sft import IGNORE_INDEX

    encoded: dict[str, Any] = {}
    for name, spec in data.specs.items():
        if spec is None:
            continue
        rows = _guarded(report, f"data.init_args.{name}", lambda name=name: data.encode(name, report=False))
        if rows is None:
            continue
        encoded[name] = rows
        stats = data.stats.get(name)
        if stats is None:  # prompt-only data: nothing is trained on directly
            report.check(True, f"{name} ({spec.path}): {len(rows)} prompts", "")
            continue
        unit = "pairs" if getattr(data, "paired", {}).get(name) else "examples"
        report.lines.append(f"  info    {stats.summary(f'{name} ({spec.path})', unit)}")
        report.check(
            stats.zero_trained == 0,
            f"{name}: every example trains on at least one token",
            f"data.init_args.{name} ({spec.path}): {stats.zero_trained} example(s) train on zero tokens and are "
            f"dropped (first: {stats.first_zero}); check the format's assistant turns / completions",
            error=False,
        )
        report.check(
            stats.truncated == 0 and stats.too_long == 0,
            f"{name}: no example is truncated",
            f"data.init_args.{name} ({spec.path}): {stats.truncated} example(s) truncated and {stats.too_long} "
            f"dropped as too long at max_length {data.max_length}; raise data.init_args.max_length",
            error=False,
        )
    train = encoded.get("train")
    if train is None or not len(train):
        return None
    sides = _sides(train.column_names)
    if sides == [("prompt_ids", None)]:
        return train  # prompts
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    doubled = no_eos = complete = 0
    for row in train.select(range(min(len(train), 1000))):
        for ids_key, labels_key in sides:
            ids, labels = row[ids_key], row[labels_key]
            doubled += bos is not None and len(ids) > 1 and ids[0] == bos and ids[1] == bos
            if len(ids) < data.max_length:  # complete (a truncated example may have lost its EOS)
                complete += 1
                no_eos += eos not in [t for t in labels if t != IGNORE_INDEX]
    report.check(
        doubled == 0,
        "one BOS at the start of each example" if bos is not None else "the tokenizer has no BOS token",
        f"tokenizer: {doubled} example(s) start with two BOS tokens (the chat template writes one and the tokenizer "
        "adds another); fix the template or the tokenizer's add_bos_token",
    )
    report.check(
        no_eos == 0,
        f"EOS {tokenizer.eos_token!r} is trained in every complete example checked ({complete})",
        f"data: {no_eos} of {complete} complete example(s) never train on EOS {tokenizer.eos_token!r}: the model "
        "would not learn to stop; check the chat template / completion format",
    )
    return train


def batch_checks(report: Report, data: Any, trainer: dict[str, Any]) -> None:
    """What an optimizer step holds and how many an epoch takes (the line `fit` logs at start)."""
    if not hasattr(data, "batch_report"):
        return
    accumulate = int(trainer.get("accumulate_grad_batches") or 1)
    batches = _guarded(report, "batches", lambda: data.batch_report(_world_size(trainer), accumulate))
    if batches is None:
        return
    report.section("batches")
    report.lines.append(f"  info    {batches.line}")
    if batches.warning:
        report.check(False, "", batches.warning, error=False)


def _world_size(trainer: dict[str, Any]) -> int:
    """Ranks the trainer arguments ask for; `auto` / -1 devices count as 1 per node (as `lightft estimate` does)."""
    devices = trainer.get("devices", 1)
    devices = len(devices) if isinstance(devices, (list, tuple)) else devices
    per_node = int(devices) if str(devices).isdigit() and int(devices) > 0 else 1
    return per_node * int(trainer.get("num_nodes", 1) or 1)


def render(report: Report, rows: Any, tokenizer: Any, n: int, color: bool) -> None:
    """Examples decoded, runs of trained tokens between `[[`/`]]` (green on a terminal)."""
    from lightft.losses.sft import IGNORE_INDEX

    columns = rows.column_names
    sides = _sides(columns)
    open_, close = (GREEN, RESET) if color else ("[[", "]]")
    for i in range(min(n, len(rows))):
        row = rows[i]
        for ids_key, labels_key in sides:
            ids = row[ids_key]
            trained = [label != IGNORE_INDEX for label in row[labels_key]] if labels_key else [False] * len(ids)
            text, start = [], 0
            for j in range(1, len(ids) + 1):
                if j == len(ids) or trained[j] != trained[start]:
                    piece = tokenizer.decode(ids[start:j])
                    text.append(f"{open_}{piece}{close}" if trained[start] else piece)
                    start = j
            side = ids_key.removesuffix("_ids").removesuffix("input")
            title = f"example {i}{' ' + side if side else ''}: {len(ids)} tokens, {sum(trained)} trained"
            report.lines.append(f"  --- {title}")
            report.lines += ["  " + line for line in "".join(text).splitlines()]


def _sides(columns: list[str]) -> list[tuple[str, str | None]]:
    """(token ids, labels) column pairs of an encoded split: one for SFT / unpaired rows, chosen and rejected for
    pairs, the prompt alone (no labels) for prompt-only data.
    """  # noqa: D205
    sides: list[tuple[str, str | None]] = [("input_ids", "labels")] if "labels" in columns else []
    sides += [(f"{s}_ids", f"{s}_labels") for s in ("chosen", "rejected") if f"{s}_ids" in columns]
    return sides or [("prompt_ids", None)]
