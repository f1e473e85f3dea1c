"""`lightft fit`, `validate`, `test` and `predict`: lightft's LightningCLI, and its parse-only variant.

The parse-only variant (`ParseOnlyCLI`) is what the commands reading `fit`'s arguments (`estimate`, `bench`,
`doctor`) build on.

Wiring only: the model (`model:`) and datamodule (`data:`) are chosen by `class_path`; the model's `ModelSpec` is
linked into the datamodule's tokenizer; every run writes into one directory (`trainer.default_root_dir`): its
resolved `config.yaml`, TensorBoard logs and `checkpoints/`. A directory holding another run is never reused
unless `--overwrite true`.
"""

from __future__ import annotations

import argparse
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml
from jsonargparse import ArgumentError, DefaultHelpFormatter, Namespace
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from lightft.callbacks import (
    BestCheckpoint,
    EarlyStop,
    NonFiniteGuard,
    PredictionWriter,
    Preemption,
    SampleGenerations,
    TrainingMonitor,
    VerifiedCheckpoint,
)
from lightft.callbacks.display import use_lightft_display
from lightft.callbacks.monitored import check_monitors
from lightft.callbacks.samples import FILENAME as SAMPLES_FILE
from lightft.commands import FIT_COMMANDS
from lightft.compat import check_compatibility
from lightft.errors import LightFTError
from lightft.loggers import configure_loggers, keep_checkpoints_in, log_config, run_directory

TRAINER_DEFAULTS: dict[str, Any] = {
    "default_root_dir": "runs/default",
    "use_distributed_sampler": False,  # the batch planner splits data across ranks itself
    "log_every_n_steps": 1,
}
_DESCRIPTIONS = {name: {"description": text} for name, text in FIT_COMMANDS.items()}
SAME_RUN_KEYS = ("model", "data")  # what makes two configs the same run (trainer settings may change on resume)


class RunDirectory(SaveConfigCallback):
    """Saves the resolved config into the run directory, refusing a directory that holds a different run.

    Resuming (`--ckpt_path`) with the same model and data config is allowed; anything else needs `--overwrite true`.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Check the run directory (rank 0 decides, every rank raises), then save the config into it and give it to
        the loggers; checkpoints go to its `checkpoints/` whatever the logger.
        """  # noqa: D205
        if stage != "fit":
            return
        run_dir = self.run_dir = run_directory(trainer)
        keep_checkpoints_in(trainer, run_dir)
        problem = None
        if trainer.is_global_zero and not self.overwrite:
            problem = self._problem(run_dir)
        elif trainer.is_global_zero and not self.config.get("ckpt_path"):  # never delete what we resume from
            _clear_run(run_dir)
        problem = trainer.strategy.broadcast(problem)
        if problem:
            raise LightFTError(problem)
        self.overwrite = True  # a resumed run rewrites its own config
        if trainer.is_global_zero and not self.already_saved:  # Lightning's would go to MLflow's or W&B's save_dir
            run_dir.mkdir(parents=True, exist_ok=True)
            config_path = str(run_dir / self.config_filename)
            self.parser.save(self.config, config_path, skip_none=False, overwrite=True, multifile=self.multifile)
        self.save_to_log_dir = False
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Rank 0: the saved config to MLflow (an artifact) and W&B (run config)."""
        log_config(trainer.loggers, self.run_dir / self.config_filename)

    def _problem(self, run_dir: Path) -> str | None:
        config_path = run_dir / self.config_filename
        fix = "pick another --trainer.default_root_dir or pass --overwrite true to replace it"
        if not config_path.is_file():
            ckpts = run_dir / "checkpoints"
            if ckpts.is_dir() and any(ckpts.iterdir()):
                return f"trainer.default_root_dir: '{run_dir}' holds checkpoints of an unknown run; {fix}."
            return None
        old = yaml.safe_load(config_path.read_text()) or {}
        new = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        differs = [k for k in SAME_RUN_KEYS if old.get(k) != new.get(k)]
        if self.config.get("ckpt_path") and not differs:
            return None
        what = f"a different run ({', '.join(differs)} differ)" if differs else "a run"
        resume = "" if differs else f"resume it with --ckpt_path {run_dir}/checkpoints/last.ckpt, or "
        return f"trainer.default_root_dir: '{run_dir}' already holds {what} ({config_path}); {resume}{fix}."


def _clear_run(run_dir: Path) -> None:
    """`--overwrite true`: remove an earlier run's checkpoints, logs, config and samples; other files stay."""
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    written = ["config.yaml", "hparams.yaml", SAMPLES_FILE]
    for path in [*run_dir.glob("events.out.tfevents.*"), *(run_dir / name for name in written)]:
        path.unlink(missing_ok=True)


class LightFTCLI(LightningCLI):
    """LightningCLI with lightft's defaults: subclass mode, linked tokenizer, one directory per run, atomic
    verified checkpoints (last.ckpt, and best.ckpt by a validation metric), early stopping, preemption handling,
    the non-finite guard, samples of fixed prompts while training, `--ckpt_path` loaded with `weights_only`.
    """  # noqa: D205

    def __init__(self, args: Any = None, run: bool = True) -> None:
        from lightft.modules.base import LightFTModule

        super().__init__(
            LightFTModule,
            pl.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=RunDirectory,
            save_config_kwargs={"overwrite": False},
            trainer_defaults={
                **TRAINER_DEFAULTS,
                "callbacks": [TrainingMonitor(), LearningRateMonitor(logging_interval="step"), PredictionWriter()],
            },
            auto_configure_optimizers=False,
            # `lightft fit --help` opens with lightft's description of the command, not Lightning's
            parser_kwargs={"parser_mode": "yaml", "exit_on_error": False, **_DESCRIPTIONS},
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """The best, checkpoint, early_stopping, preemption, nonfinite and samples groups, the model -> tokenizer
        link, `--overwrite`.
        """  # noqa: D205
        # best before checkpoint: at the end of a validation best.ckpt is decided before last.ckpt records it
        parser.add_lightning_class_args(BestCheckpoint, "best")
        parser.add_lightning_class_args(VerifiedCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": 1})
        parser.add_lightning_class_args(EarlyStop, "early_stopping")
        parser.add_lightning_class_args(Preemption, "preemption")
        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite")
        parser.add_lightning_class_args(SampleGenerations, "samples")
        parser.link_arguments("model.init_args.model", "data.init_args.tokenizer", apply_on="parse")
        parser.add_argument(
            "--overwrite", type=bool, default=False, help="Replace a run directory holding another run."
        )

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        """Lightning's Trainer; the progress bar and model summary it adds are lightft's (`callbacks.display`)."""
        given = self._get(self.config_init, "trainer", default={}).get("callbacks") or []
        given = list(given) if isinstance(given, list) else [given]  # a copy: the Trainer appends to that list
        trainer = super().instantiate_trainer(**kwargs)
        use_lightft_display(trainer, given)
        return trainer

    def after_instantiate_classes(self) -> None:
        """Config-time compatibility checks, before data is tokenized or weights are loaded."""
        super().after_instantiate_classes()
        check_compatibility(self.model, self.datamodule, self.trainer)
        if self.subcommand in (None, "fit"):
            check_monitors(self.model, self.datamodule, self.trainer)  # early_stopping / best: a metric it logs
        self.model.compatibility_checked = True

    def before_instantiate_classes(self) -> None:
        """TensorBoard logs straight into the run directory (MLflow, W&B: `lightft.loggers`); honour `--overwrite`."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        self.save_config_kwargs["overwrite"] = bool(config.get("overwrite"))
        if "weights_only" in config and config.get("weights_only") is None:
            config.weights_only = True  # --ckpt_path loads tensors and plain data only, never arbitrary objects
        if config.trainer.logger in (None, True):
            config.trainer.logger = Namespace(
                class_path="lightning.pytorch.loggers.TensorBoardLogger",
                init_args=Namespace(save_dir=config.trainer.default_root_dir, name="", version=""),
            )
        configure_loggers(config.trainer)  # MLflow / W&B: installed (else the pip command), run-directory defaults


def check_ckpt_path(words: list[str]) -> None:
    """`--ckpt_path FILE` exists (Lightning's own names `last`, `best`, `hpc` and `registry` aside), before anything
    is built or written.
    """  # noqa: D205
    for flag, value in zip(words, words[1:], strict=False):
        if (
            flag == "--ckpt_path"
            and value not in ("last", "best", "hpc", "registry", "null")
            and not Path(value).exists()
        ):
            raise LightFTError(
                f"--ckpt_path: checkpoint '{value}' not found; a run keeps them in "
                "<trainer.default_root_dir>/checkpoints/ (last.ckpt is the latest)."
            )


def check_config_files(words: list[str]) -> None:
    """Every `--config FILE` exists and is valid YAML; errors name the file and line (jsonargparse names neither)."""
    for flag, value in zip(words, words[1:], strict=False):
        if flag not in ("--config", "-c"):
            continue
        path = Path(value)
        if not path.is_file():
            raise LightFTError(f"--config: file '{value}' not found; give the path of a YAML config.")
        try:
            yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"{value}:{mark.line + 1}:{mark.column + 1}" if mark else value
            raise LightFTError(
                f"{where}: invalid YAML ({getattr(err, 'problem', None) or err}); fix the file."
            ) from err


class _HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Jsonargparse's help, the description kept as written (a command's docstring)."""


class ParseOnlyCLI(LightFTCLI):
    """`lightft fit`'s arguments plus a command's own options, parsed into one namespace; the module and data module
    instantiated (with `instantiate=False` only parsed): no Trainer, no checks needing one.

    The command's options are typed jsonargparse options, shown in `lightft <command> --help` beside every fit key;
    `self.config` holds their values (e.g. `config.steps`) and `fit_arguments(args)` gives back the words of `args`
    that are `lightft fit`'s.
    """  # noqa: D205

    def __init__(
        self,
        args: list[str],
        command: str = "fit",
        add_arguments: Callable[[LightningArgumentParser], None] | None = None,
        description: str | None = None,
        instantiate: bool = True,
    ) -> None:
        self.command = command
        self.own_options: dict[str, Any] = {}  # option string -> its nargs
        self._add_command_arguments = add_arguments
        self._description = description
        self._instantiate = instantiate
        args = list(args)
        check_config_files(args)
        with warnings.catch_warnings():  # `args` given while sys.argv also holds them: intended here
            warnings.filterwarnings("ignore", message=".*args parameter is intended")
            super().__init__(args=args, run=False)

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """The parser of `lightft <command>`: its own usage line and description; no abbreviated options."""
        kwargs.update(
            prog=f"lightft {self.command}",
            usage=f"lightft {self.command} --config X.yaml [--config overlay.yaml ...] [options] [fit arguments]",
            description=self._description,
            formatter_class=_HelpFormatter,
            allow_abbrev=False,  # an abbreviation would be neither the command's option nor fit's
        )
        return super().init_parser(**kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """The command's own options (at the top of `--help`), then `lightft fit`'s."""
        if self._add_command_arguments is not None:
            before = set(parser._actions)
            self._add_command_arguments(parser)
            for action in parser._actions:
                if action not in before:
                    self.own_options.update(dict.fromkeys(action.option_strings, action.nargs))
        super().add_arguments_to_parser(parser)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse; a command line that fails to parse and names no config gets told to give one."""
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            if not any(word in ("--config", "-c") or word.startswith("--config=") for word in args):
                raise LightFTError(
                    f"--config: give the run's config: lightft {self.command} --config configs/<method>/<recipe>.yaml"
                ) from err
            raise

    def instantiate_classes(self) -> None:
        """The module and data module (and the trainer's arguments, in `config_init["trainer"]`); no Trainer."""
        if not self._instantiate:
            return
        self.config_init = self.parser.instantiate_classes(self.config)
        self.datamodule = self._get(self.config_init, "data")
        self.model = self._get(self.config_init, "model")

    def after_instantiate_classes(self) -> None:
        """No compatibility checks: they need a Trainer (`lightft doctor` runs them from the config)."""
        return None

    def fit_arguments(self, args: list[str]) -> list[str]:
        """The words of `args` that are `lightft fit`'s: `args` without the command's own options and their values."""
        rest, i = [], 0
        while i < len(args):
            name, inline = args[i].split("=", 1)[0], "=" in args[i]
            i += 1
            if name not in self.own_options:
                rest.append(args[i - 1])
            elif not inline and self.own_options[name] != 0 and i < len(args):
                # an optional value (`--json [true|false]`) is taken only when it is not the next option
                i += self.own_options[name] != "?" or not args[i].startswith("-")
        return rest


def parse_fit_args(args: list[str]) -> tuple[Any, Any, dict[str, Any]]:
    """A `lightft fit` command line -> (module, data module, trainer arguments); no Trainer, nothing loaded."""
    cli = ParseOnlyCLI(args)
    return cli.model, cli.datamodule, cli.config_init["trainer"]
