"""The `lightft` console script: dispatches to a command and turns user errors into one line (exit status 2).

The commands live in `lightft.commands` (LightningCLI's `fit`/`validate`/`test`/`predict` in
`lightft.commands.fit`); this module imports them, never the other way round. `LightFTCLI`, `check_config_files`
and friends are re-exported here for existing importers.
"""

from __future__ import annotations

import re
import sys

from jsonargparse import ArgumentError

from lightft.commands import COMMANDS, EXTRA_COMMANDS, FIT_COMMANDS, run_command, usage
from lightft.commands.fit import (
    SAME_RUN_KEYS,
    TRAINER_DEFAULTS,
    LightFTCLI,
    RunDirectory,
    check_ckpt_path,
    check_config_files,
)
from lightft.errors import LightFTError

__all__ = [
    "SAME_RUN_KEYS",
    "TRAINER_DEFAULTS",
    "LightFTCLI",
    "RunDirectory",
    "check_ckpt_path",
    "check_config_files",
    "config_error",
    "main",
]


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `lightft` console script (`argv` defaults to the command line)."""
    words = sys.argv[1:] if argv is None else argv
    if not words or words[0] in ("-h", "--help"):
        print(usage())
        return
    try:
        if words[0] in EXTRA_COMMANDS:
            run_command(words[0], words[1:])
        elif words[0] in FIT_COMMANDS or words[0].startswith("-"):
            check_config_files(words)
            check_ckpt_path(words)
            LightFTCLI(args=argv)
        else:
            raise LightFTError(f"unknown command '{words[0]}'; choose one of {', '.join(COMMANDS)} (lightft --help).")
    except ArgumentError as err:
        message = config_error(str(err))
        if words[0] in EXTRA_COMMANDS and re.match(r"[\w.]+: ", message):  # a command's own option: --name
            message = f"--{message}"
        print(f"lightft: error: {message}", file=sys.stderr)
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


VAL_CHECK = re.compile(r"`val_check_interval` \((\d+)\) must be less than or equal to the number of the training "
                       r"batches \((\d+)\)")  # fmt: skip


def _find_user_error(err: BaseException | None) -> LightFTError | None:
    """The LightFTError behind `err`, also when a library wrapped it (jsonargparse, datasets); Lightning's
    `val_check_interval` refusal (an epoch shorter than the interval) as one line with the fix.
    """  # noqa: D205
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, LightFTError):
            return err
        if isinstance(err, ValueError) and (match := VAL_CHECK.search(str(err))):
            interval, batches = match.groups()
            return LightFTError(
                f"trainer.val_check_interval: {interval} batches, but an epoch has only {batches}; lower it, or set "
                "trainer.check_val_every_n_epoch: null to count it in batches across epochs."
            )
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


DETAIL = re.compile(
    r"not accepted|not expected|unrecognized|expected a|not of type|does not exist|no action|required|invalid"
    r"|not found",
    re.I,
)
NONE_ALTERNATIVE = "Expected a <class 'NoneType'>"  # an Optional's other subtype: never what the user meant


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
    details = [line for line in details if NONE_ALTERNATIVE not in line] or details
    where = f"{keys[0]}: " if keys else ""
    owner = f" ({classes[0]})" if classes else ""
    detail = details[0].removeprefix("- ") if details else lines[-1] if lines else "invalid configuration"
    detail = _literal(detail, lines) or detail
    return f"{where}{detail}{owner}; see --help or --print_config for the valid keys and types."


def _literal(detail: str, lines: list[str]) -> str | None:
    """'X' is not one of a, b, c: a value outside a `Literal`'s choices, said plainly."""
    choices = re.search(r"Expected a typing\.Literal\[(.*?)\]", detail)
    given = [m.group(1) for line in lines if (m := re.search(r"(?:Given value|Got value): (.+)$", line))]
    if choices is None or not given:
        return None
    return f"'{given[0]}' is not one of {choices.group(1).replace(chr(39), '')}"


if __name__ == "__main__":
    main()
