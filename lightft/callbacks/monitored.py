"""Monitored validation metrics: what `--early_stopping.monitor` and `--best.monitor` may name, and when they apply.

Before a fit starts (`check_monitors`, called by `lightft fit`; again in the callbacks' `setup`): the run must
validate (validation data, validation not turned off) and the key must be one the method's validation logs
(`Method.validation_metrics`). At each validation (`require_logged`): the key must have been logged, which also
checks a method that declares nothing. Either way a wrong key is one line naming the flag and the metrics there
are, never a stack trace mid-run.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from lightft.data.base import TokenDataModule
from lightft.errors import LightFTError


def validation_problem(datamodule: Any, trainer: pl.Trainer) -> str | None:
    """Why this fit never validates (the end of a sentence, with the fix), or None when it does or cannot tell."""
    if trainer.limit_val_batches == 0:
        return "validation is off (trainer.limit_val_batches: 0)"
    if isinstance(datamodule, TokenDataModule) and datamodule.specs.get("val") is None and not datamodule.val_fraction:
        return "this run has no validation data; set data.init_args.val or data.init_args.val_fraction"
    return None


def declared_metrics(module: Any) -> tuple[str, ...] | None:
    """The metrics `module`'s validation logs, as its method declares them (None: not declared)."""
    describe = getattr(module, "describe", None)
    return describe().validation_metrics if callable(describe) else None


def monitor_problem(flag: str, key: str, module: Any, datamodule: Any, trainer: pl.Trainer) -> str | None:
    """Why `key` cannot be monitored in this fit (one line naming `flag`), or None."""
    never = validation_problem(datamodule, trainer)
    if never:
        return f"{flag}: '{key}' is a validation metric, but {never}."
    declared = declared_metrics(module)
    if declared is not None and key not in declared:
        return (
            f"{flag}: {type(module).__name__}'s validation does not log '{key}'; it logs {', '.join(declared)} "
            "(pick one of them)."
        )
    return None


def check_monitors(module: Any, datamodule: Any, trainer: pl.Trainer) -> None:
    """Config time: every monitor a callback was given (`checked_monitor`: flag and key) names a metric this fit's
    validation logs.
    """  # noqa: D205
    for callback in trainer.callbacks:
        checked = getattr(callback, "checked_monitor", None)
        if checked is not None and (problem := monitor_problem(*checked, module, datamodule, trainer)):
            raise LightFTError(problem)


def require_logged(flag: str, key: str, trainer: pl.Trainer) -> None:
    """At the end of a validation: `key` was logged, else one line naming `flag` and what was logged."""
    if key in trainer.callback_metrics:
        return
    logged = sorted(name for name in trainer.callback_metrics if not name.startswith(("train/", "lr-")))
    raise LightFTError(
        f"{flag}: '{key}' was not logged by this run's validation; it logged {', '.join(logged) or 'nothing'} "
        "(pick one of them)."
    )
