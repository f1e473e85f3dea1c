"""Experiment loggers: TensorBoard by default, MLflow or Weights & Biases chosen with Lightning's `trainer.logger`.

`configs/loggers/mlflow.yaml` and `wandb.yaml` choose the others (`pip install 'lightft[mlflow]'`, `'lightft[wandb]'`).
Whatever the logger, the run directory (`trainer.default_root_dir`) keeps `config.yaml`, `samples.jsonl` and
`checkpoints/`; the logger gets every logged metric, the hyper-parameters, the resolved config and the sample tables.
Config time: `configure_loggers` (package installed, defaults); run time: `run_directory`, `log_config`, `log_table`.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml
from jsonargparse import Namespace
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from lightft.errors import LightFTError

MLFLOW_DEFAULT_URI = "sqlite:///mlflow.db"  # MLflow's own default; Lightning's (file:./mlruns) MLflow 3 refuses
SQL_SCHEMES = ("sqlite:", "postgresql", "mysql", "mssql")  # MLflow's database stores need sqlalchemy + alembic
EXTRAS = {MLFlowLogger: "mlflow", WandbLogger: "wandb"}  # logger -> the lightft extra that installs its package
DIRECTORY_LOGGERS = (TensorBoardLogger, CSVLogger)  # log into a directory of the run: their log_dir is the run's


def importable(module: str) -> bool:
    """Whether `module` can be found for import (without importing it: mlflow and wandb take seconds)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def configure_loggers(trainer: Namespace, can_import: Callable[[str], bool] = importable) -> None:
    """Config time, before anything is built or written: fill each chosen logger's run defaults, then refuse one
    whose package is missing with the pip command that installs it.

    MLflow: `tracking_uri` MLflow's default (`sqlite:///mlflow.db`) unless given or `$MLFLOW_TRACKING_URI` is set;
    W&B: its files under the run directory (`save_dir`); both: the run named after the run directory.
    """  # noqa: D205
    loggers = trainer.logger if isinstance(trainer.logger, list) else [trainer.logger]
    for logger in loggers:
        if not isinstance(logger, Namespace) or not logger.get("class_path"):
            continue  # False, True or an instance given in Python
        cls = _import_class(logger.class_path)
        if logger.get("init_args") is None:
            logger.init_args = Namespace()
        fill_defaults(cls, logger.init_args, Path(trainer.default_root_dir))
        check_installed(cls, logger.init_args, can_import)


def fill_defaults(cls: type, init_args: Namespace, run_dir: Path) -> None:
    """The defaults lightft chooses for MLflow and W&B (only where the user left Lightning's)."""
    if issubclass(cls, MLFlowLogger):
        if not init_args.get("tracking_uri") and init_args.get("save_dir", "./mlruns") == "./mlruns":
            init_args.tracking_uri = MLFLOW_DEFAULT_URI
        if init_args.get("run_name") is None:
            init_args.run_name = run_dir.name
    elif issubclass(cls, WandbLogger):
        if init_args.get("save_dir", ".") == "." and init_args.get("dir") is None:
            init_args.save_dir = str(run_dir)
        if init_args.get("name") is None:
            init_args.name = run_dir.name


def check_installed(cls: type, init_args: Namespace, can_import: Callable[[str], bool] = importable) -> None:
    """Raise the one-line fix when a package the logger needs cannot be imported."""
    extra = next((name for base, name in EXTRAS.items() if issubclass(cls, base)), None)
    if extra is None:
        return
    needed = [extra]
    uri = str(init_args.get("tracking_uri") or "")
    if extra == "mlflow" and uri.startswith(SQL_SCHEMES):
        needed += ["sqlalchemy", "alembic"]
    for module in needed:
        if not can_import(module):
            store = f" (for tracking_uri {uri})" if module != extra else ""
            raise LightFTError(f"trainer.logger: {cls.__name__} needs {module}{store}: pip install 'lightft[{extra}]'")


def _import_class(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def run_directory(trainer: pl.Trainer) -> Path:
    """The run's directory: a TensorBoard or CSV logger's `log_dir`, else `trainer.default_root_dir` (MLflow and W&B
    keep their own stores). Collective, like `trainer.log_dir`: call it on every rank.
    """  # noqa: D205
    log_dir = trainer.log_dir
    first = trainer.loggers[0] if trainer.loggers else None
    return Path(log_dir if isinstance(first, DIRECTORY_LOGGERS) and log_dir else trainer.default_root_dir)


def keep_checkpoints_in(trainer: pl.Trainer, run_dir: Path) -> None:
    """Checkpoints go to `<run dir>/checkpoints` whatever the logger (Lightning would use MLflow's or W&B's run id)."""
    for callback in trainer.checkpoint_callbacks:
        if getattr(callback, "dirpath", "") is None:
            callback.dirpath = str(run_dir / "checkpoints")


def log_config(loggers: list[Logger], path: Path) -> None:
    """Rank 0: the run's saved config to the loggers that keep it: MLflow (the file, an artifact), W&B (run config
    `config`, nested as in the file). TensorBoard has the file beside its logs.
    """  # noqa: D205
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            logger.experiment.log_artifact(logger.run_id, str(path))
        elif isinstance(logger, WandbLogger):
            config = yaml.safe_load(path.read_text(encoding="utf-8"))
            logger.experiment.config.update({"config": config}, allow_val_change=True)


def log_table(logger: Logger, tag: str, rows: list[dict[str, Any]], markdown: str, step: int) -> None:
    """Rank 0: rows of records under `tag`: a W&B table; MLflow `<tag>/step_<N>.md` and TensorBoard text: `markdown`."""
    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_text(tag, markdown, step)
    elif isinstance(logger, MLFlowLogger):
        logger.experiment.log_text(logger.run_id, markdown, f"{tag}/step_{step}.md")
    elif isinstance(logger, WandbLogger):
        columns = list(dict.fromkeys(key for row in rows for key in row))
        logger.log_text(key=tag, columns=columns, data=[[row.get(c) for c in columns] for row in rows], step=step)
