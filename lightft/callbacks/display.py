"""What a run prints: Lightning's default progress bar and model summary, without the lines that mean nothing.

- `StepProgressBar`: when `max_steps` alone bounds the run (Lightning then sets `max_epochs=-1`), the bar counts
  optimizer steps up to `max_steps` ("Epoch 0 · steps ━━━ 12/30") instead of "Epoch 0/-2" over an epoch's batches;
  its speed reads "3.2s/it" below one step a second (not "0.31it/s"), and nothing before it is known (not "0.00it/s").
- `ParameterSummary`: the model summary without the FLOPs column and "Total FLOPs: 0" when nothing was measured
  (Lightning counts FLOPs only for a module with an `example_input_array`).

`use_lightft_display(trainer, given)` puts them in place of the defaults the Trainer added itself.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelSummary, RichModelSummary, RichProgressBar
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE
from lightning.pytorch.utilities.model_summary.model_summary import (
    _format_summary_table,
    get_formatted_model_size,
    get_human_readable_count,
)

log = logging.getLogger("lightning.pytorch.callbacks.model_summary")  # where Lightning's own summary goes


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar; with `max_steps` alone (`max_epochs` -1) it counts optimizer steps.

    Lightning's would show "Epoch 0/-2" (the epoch total of an unbounded run) over an epoch's batches, or over
    `max_steps` batches, which is not `max_steps` optimizer steps with gradient accumulation.
    """

    def by_steps(self) -> bool:
        """Whether `max_steps` alone ends the run: the bar then goes from step 0 to `max_steps`."""
        return self.trainer.max_epochs == -1 and self.trainer.max_steps > 0

    @property
    def total_train_batches(self) -> int | float:
        """`max_steps` when counting steps, else Lightning's: the batches of this epoch."""
        return self.trainer.max_steps if self.by_steps() else super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        if self.trainer.max_epochs != -1:
            return super()._get_train_description(current_epoch)
        description = f"Epoch {current_epoch}" + (" · steps" if self.by_steps() else "")
        return f"{description:{len(self.validation_description)}}"  # as Lightning pads it: no flicker

    def configure_columns(self, trainer: pl.Trainer) -> list:
        """Lightning's columns, the speed as `Speed` shows it."""
        columns = super().configure_columns(trainer)
        return [Speed(self.theme.processing_speed) if isinstance(c, ProcessingSpeedColumn) else c for c in columns]

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Lightning's new epoch; counting steps, the bar keeps the steps done (also when resuming)."""
        super().on_train_epoch_start(trainer, pl_module)
        if self.by_steps() and self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id, completed=trainer.global_step)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Lightning's update, at the optimizer step when counting steps (it sets the bar to `batch_idx + 1`)."""
        position = trainer.global_step - 1 if self.by_steps() else batch_idx
        super().on_train_batch_end(trainer, pl_module, outputs, batch, position)


if _RICH_AVAILABLE:
    from lightning.pytorch.callbacks.progress.rich_progress import ProcessingSpeedColumn
    from rich.progress import ProgressColumn, Task
    from rich.text import Text

    class Speed(ProgressColumn):
        """Steps (or batches) per second, in seconds per step below one a second; empty while unknown."""

        def __init__(self, style: Any) -> None:
            self.style = style
            super().__init__()

        def render(self, task: Task) -> Text:
            """`2.50it/s`, `3.2s/it`, or nothing before rich has measured it (its estimate spans 30 s)."""
            speed = task.finished_speed or task.speed
            if not speed:
                return Text("")
            return Text(f"{speed:.2f}it/s" if speed >= 1 else f"{1 / speed:.1f}s/it", style=self.style)


class ParameterSummary(ModelSummary):
    """Lightning's model summary (rich when installed), with FLOPs only when Lightning measured them."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        """Print the table and the totals; the FLOPs column and total only when `total_flops` was measured."""
        if total_flops:  # the module has an `example_input_array`: Lightning's own table
            lightning = RichModelSummary if _RICH_AVAILABLE else ModelSummary
            return lightning.summarize(
                summary_data,
                total_parameters,
                trainable_parameters,
                model_size,
                total_training_modes,
                total_flops,
                **summarize_kwargs,
            )
        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]
        if not _RICH_AVAILABLE:
            table = _format_summary_table(
                total_parameters, trainable_parameters, model_size, total_training_modes, total_flops, *columns
            )
            log.info("\n" + "\n".join(line for line in table.splitlines() if not line.endswith("Total Flops")))
            return None
        totals = {
            "Trainable params": get_human_readable_count(int(trainable_parameters)),
            "Non-trainable params": get_human_readable_count(int(total_parameters - trainable_parameters)),
            "Total params": get_human_readable_count(int(total_parameters)),
            "Total estimated model params size (MB)": get_formatted_model_size(model_size),
            "Modules in train mode": total_training_modes["train"],
            "Modules in eval mode": total_training_modes["eval"],
        }
        _print_rich(columns, totals, summarize_kwargs.get("header_style", "bold magenta"))
        return None


def _print_rich(columns: list[tuple[str, list[str]]], totals: dict[str, Any], header_style: str) -> None:
    """The summary as `RichModelSummary` prints it, for the columns given."""
    from rich import get_console
    from rich.table import Table

    table = Table(header_style=header_style)
    for name, _ in columns:
        numbers = name in ("Params", "Params per Device", "In sizes", "Out sizes")
        justify = "right" if numbers else "left"
        table.add_column(name, justify=justify, style="dim" if name == " " else None, no_wrap=name == "Name")
    for row in zip(*(values for _, values in columns), strict=True):
        table.add_row(*row)
    grid = Table.grid(expand=True)
    grid.add_column()
    for label, value in totals.items():
        grid.add_row(f"[bold]{label}[/]: {value}")
    console = get_console()
    console.print(table)
    console.print(grid)


def use_lightft_display(trainer: pl.Trainer, given: Sequence[pl.Callback]) -> None:
    """Replace the progress bar and model summary that `trainer` added by default (those in `given`, the callbacks
    the config names, stay) with `StepProgressBar` and `ParameterSummary`.
    """  # noqa: D205
    for i, callback in enumerate(trainer.callbacks):
        if any(callback is mine for mine in given):
            continue
        if type(callback) is RichProgressBar:
            trainer.callbacks[i] = StepProgressBar()
        elif type(callback) in (ModelSummary, RichModelSummary):
            kwargs = callback._summarize_kwargs
            trainer.callbacks[i] = ParameterSummary(max_depth=callback._max_depth, **kwargs)
