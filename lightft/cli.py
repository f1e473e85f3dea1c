"""The `lightft` command: LightningCLI subcommands (fit/validate/test/predict) plus export and generate.

Wiring only: the model (`model:`) and datamodule (`data:`) are chosen by `class_path`; the model's `ModelSpec` is
linked into the datamodule's tokenizer; every run writes into one directory (`trainer.default_root_dir`): its
resolved `config.yaml`, TensorBoard logs and `checkpoints/`. A directory holding another run is never reused
unless `--overwrite true`.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml
from jsonargparse import ArgumentError, Namespace
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from lightft.callbacks import NonFiniteGuard, PredictionWriter, Preemption, TrainingMonitor, VerifiedCheckpoint
from lightft.compat import check_compatibility
from lightft.errors import LightFTError

EXTRA_COMMANDS = ("estimate", "bench", "doctor", "export", "generate")
TRAINER_DEFAULTS: dict[str, Any] = {
    "default_root_dir": "runs/default",
    "use_distributed_sampler": False,  # the batch planner splits data across ranks itself
    "log_every_n_steps": 1,
}
SAME_RUN_KEYS = ("model", "data")  # what makes two configs the same run (trainer settings may change on resume)


class RunDirectory(SaveConfigCallback):
    """Saves the resolved config into the run directory, refusing a directory that holds a different run.

    Resuming (`--ckpt_path`) with the same model and data config is allowed; anything else needs `--overwrite true`.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Check the run directory (rank 0 decides, every rank raises), then save the config."""
        if stage != "fit":
            return
        run_dir = Path(trainer.log_dir or trainer.default_root_dir)
        problem = None
        if trainer.is_global_zero and not self.overwrite:
            problem = self._problem(run_dir)
        elif trainer.is_global_zero and not self.config.get("ckpt_path"):  # never delete what we resume from
            _clear_run(run_dir)
        problem = trainer.strategy.broadcast(problem)
        if problem:
            raise LightFTError(problem)
        self.overwrite = True  # a resumed run rewrites its own config
        super().setup(trainer, pl_module, stage)

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
    """`--overwrite true`: remove what an earlier run wrote here (checkpoints, logs, config); other files stay."""
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    for path in [*run_dir.glob("events.out.tfevents.*"), run_dir / "config.yaml", run_dir / "hparams.yaml"]:
        path.unlink(missing_ok=True)


class LightFTCLI(LightningCLI):
    """LightningCLI with lightft's defaults: subclass mode, linked tokenizer, one directory per run, atomic
    verified checkpoints, preemption handling, the non-finite guard, `--ckpt_path` loaded with `weights_only`.
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
            parser_kwargs={"parser_mode": "yaml", "exit_on_error": False},
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Checkpointing, preemption and non-finite guard groups, the model -> tokenizer link and `--overwrite`."""
        parser.add_lightning_class_args(VerifiedCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": 1})
        parser.add_lightning_class_args(Preemption, "preemption")
        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite")
        parser.link_arguments("model.init_args.model", "data.init_args.tokenizer", apply_on="parse")
        parser.add_argument(
            "--overwrite", type=bool, default=False, help="Replace a run directory holding another run."
        )

    def after_instantiate_classes(self) -> None:
        """Config-time compatibility checks, before data is tokenized or weights are loaded."""
        super().after_instantiate_classes()
        check_compatibility(self.model, self.datamodule, self.trainer)
        self.model.compatibility_checked = True

    def before_instantiate_classes(self) -> None:
        """TensorBoard logs straight into the run directory; honour `--overwrite`."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        self.save_config_kwargs["overwrite"] = bool(config.get("overwrite"))
        if "weights_only" in config and config.get("weights_only") is None:
            config.weights_only = True  # --ckpt_path loads tensors and plain data only, never arbitrary objects
        if config.trainer.logger in (None, True):
            config.trainer.logger = Namespace(
                class_path="lightning.pytorch.loggers.TensorBoardLogger",
                init_args=Namespace(save_dir=config.trainer.default_root_dir, name="", version=""),
            )


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `lightft` console script (`argv` defaults to the command line)."""
    words = sys.argv[1:] if argv is None else argv
    try:
        if words and words[0] in EXTRA_COMMANDS:
            from lightft.commands import run_command

            run_command(words[0], words[1:])
        else:
            check_config_files(words)
            check_ckpt_path(words)
            LightFTCLI(args=argv)
    except ArgumentError as err:
        print(f"lightft: error: {config_error(str(err))}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as err:
        user_error = _find_user_error(err) or _unsafe_checkpoint(err, words)
        if user_error is None:
            raise
        print(f"lightft: error: {user_error}", file=sys.stderr)
        raise SystemExit(2) from None


def _unsafe_checkpoint(err: BaseException, words: list[str]) -> LightFTError | None:
    """A checkpoint refused by `torch.load(weights_only=True)` (it holds pickled Python objects), or one that is
    not a readable torch file at all (truncated, or something else).
    """  # noqa: D205
    import pickle

    flag = next((w for w in words if w in ("--ckpt_path", "--ckpt")), "--ckpt_path")
    path = words[words.index(flag) + 1] if flag in words and words.index(flag) + 1 < len(words) else "the checkpoint"
    while err is not None and not isinstance(err, pickle.UnpicklingError):
        if isinstance(err, RuntimeError) and "PytorchStreamReader failed" in str(err):
            return LightFTError(
                f"{flag}: '{path}' is not a readable checkpoint ({str(err).strip().splitlines()[0]}); it is truncated "
                "or not a torch file: resume from another one (lightft writes them atomically: last.ckpt is whole)."
            )
        err = err.__cause__ or err.__context__
    if err is None:
        return None
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
    what = found.group(1) if found else "objects other than tensors and plain data"
    retry = " (add --weights_only false)" if flag == "--ckpt_path" else ""
    return LightFTError(
        f"{flag}: '{path}' holds pickled Python objects ({what}), which would run code when loaded; lightft loads "
        f"checkpoints with weights_only and refuses it. Load it only if you wrote it and trust it{retry}."
    )


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


def _find_user_error(err: BaseException | None) -> LightFTError | None:
    """The LightFTError behind `err`, also when a library wrapped it (jsonargparse, datasets)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, LightFTError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


DETAIL = re.compile(
    r"not accepted|not expected|unrecognized|expected a|does not exist|no action|required|invalid|not found", re.I
)


IMPORT_PROBLEM = re.compile(r"No module named|has no attribute|cannot import|not accessible|ImportError")


def config_error(message: str) -> str:
    """Jsonargparse's nested, multi-line parse errors condensed to one line that names the key."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    keys = [m.group(1) for line in lines if (m := re.search(r'(?:Parser key|Key) "([^"]+)"', line))]
    where = ".init_args.".join(keys) or "class_path"
    for line in lines:
        protocol = re.search(r"Import path (\S+) does not implement protocol (\w+)", line)
        if protocol:
            return (
                f"{where}: '{protocol.group(1)}' does not implement {protocol.group(2)}: its methods must take the "
                f"protocol's parameters, by the same names (see {protocol.group(2)}'s docstring)."
            )
    for i in range(len(lines) - 2, -1, -1):  # the innermost class_path that could not be imported
        found = re.search(r"Problem with given class_path '([^']+)':", lines[i])
        if found and IMPORT_PROBLEM.search(lines[i + 1]) and not lines[i + 1].startswith("Parser key"):
            return (
                f"{where}: cannot import '{found.group(1)}' ({lines[i + 1].lstrip('- ')}); check the class_path "
                "spelling, or install the package that defines it."
            )
    classes = [m.group(1) for line in lines if (m := re.search(r"class_path '([^']+)'", line))]
    details = [line for line in lines if DETAIL.search(line) and not line.startswith("Given value")]
    where = f"{keys[0]}: " if keys else ""
    owner = f" ({classes[0]})" if classes else ""
    detail = details[0] if details else lines[-1] if lines else "invalid configuration"
    return f"{where}{detail}{owner}; see --help or --print_config for the valid keys and types."


if __name__ == "__main__":
    main()
