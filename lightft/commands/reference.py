"""docs/cli.md, the command-line reference: every command's options, and the init arguments of the modules.

Read from the parsers that `lightft <command> --help` prints (name, type, default, doc). Not a command:
`python docs/make_cli.py` writes the page and `tests/commands/test_reference.py` checks that it is current.

Commands come from `lightft.commands.COMMANDS`: a new one appears once it is listed there. A parser is caught at its
help action (`lightft <command> --help` builds it and stops there), so nothing is loaded or run.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

from jsonargparse import ArgumentParser, Namespace

from lightft.commands import COMMANDS, EXTRA_COMMANDS, FIT_COMMANDS, run_command

LIGHTNING_KEYS = ("trainer", "model", "data")  # Lightning's Trainer; the module and data module chosen by class_path
# jsonargparse's actions that are not options: help, config files (`--config`, a group's `--checkpoint CONFIG`; the
# page's introduction says what they do), `--print_config`, a class's `--model.help`, links between keys
NOT_OPTIONS = (
    "_HelpAction",
    "ActionConfigFile",
    "_ActionConfigLoad",
    "_ActionPrintConfig",
    "_ActionHelpClassPath",
    "ActionLink",
)


@dataclass(frozen=True)
class Option:
    """One option as docs/cli.md shows it (`name` as typed on the command line, or as a key under `init_args:`)."""

    name: str
    type: str
    default: str  # as written in YAML; "" when `required`
    doc: str
    required: bool = False

    def row(self) -> str:
        """The option's Markdown table row (a `|` inside a cell escaped, code spans too)."""
        cells = (_code(self.name), _code(self.type), "required" if self.required else _code(self.default), self.doc)
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


class _Caught(BaseException):
    """Raised in place of printing a help: carries the parser that would have printed it."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def _catch(action: argparse.Action, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
    raise _Caught(parser)


@cache
def command_parser(name: str) -> argparse.ArgumentParser:
    """The parser that `lightft <name> --help` prints (caught at its help action: nothing else runs)."""
    from lightft.commands.fit import LightFTCLI

    help_action = argparse._HelpAction.__call__
    argparse._HelpAction.__call__ = _catch  # type: ignore[method-assign]
    try:
        with warnings.catch_warnings():  # `args` given while sys.argv holds other words: intended here
            warnings.filterwarnings("ignore", message=".*args parameter is intended")
            if name in EXTRA_COMMANDS:
                run_command(name, ["--help"])
            else:
                LightFTCLI(args=[name, "--help"])
    except _Caught as caught:
        return caught.parser
    finally:
        argparse._HelpAction.__call__ = help_action  # type: ignore[method-assign]
    raise RuntimeError(f"`lightft {name} --help` printed no parser's help")


def options(parser: argparse.ArgumentParser, prefix: str = "--") -> list[Option]:
    """Every option of `parser` (help, config files and links aside), in `--help`'s order."""
    formatter = parser.formatter_class(prog=parser.prog)
    defaults = parser.get_defaults() if isinstance(parser, ArgumentParser) else {}
    groups = getattr(parser, "groups", None) or {}
    found = []
    for action in parser._actions:
        if _is_option(action, groups):
            name = prefix + action.dest.removeprefix("init_args.")
            default = "" if action.required else _value(defaults.get(action.dest))
            found.append(Option(name, _type(formatter, action), default, _doc(action.help), bool(action.required)))
    return found


def _is_option(action: argparse.Action, groups: dict[str, Any]) -> bool:
    """An option a user sets: not one of `NOT_OPTIONS`, a hidden one or a group's config file."""
    hidden = action.help == argparse.SUPPRESS or not action.option_strings
    return not (hidden or type(action).__name__ in NOT_OPTIONS or action.dest in groups)


def _type(formatter: Any, action: argparse.Action) -> str:
    text = formatter._get_type_str(action) or ""
    return re.sub(r"<class '([\w.]+)'>", r"\1", text)  # a protocol: its name


def _value(value: Any) -> str:
    """A default as it is written in YAML or on the command line."""
    if isinstance(value, Namespace) and "class_path" in value:
        return str(value.class_path)
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, str):
        return value or '""'
    if isinstance(value, list | tuple):
        return json.dumps(list(value), default=str)
    return str(value)


def _doc(text: str | None) -> str:
    """The first paragraph of an option's doc on one line (Lightning's reStructuredText as Markdown)."""
    first = " ".join((text or "").split("\n\n")[0].split())
    first = re.sub(r"\s*\S+::$", "", first)  # "Example::" whose example is in the next paragraph
    first = re.sub(r"`([^`<]+?) <([^>]+)>`_", r"[\1](\2)", first)  # a link
    return _text(first.replace("``", "`"))


def _text(text: str) -> str:
    """Prose for Markdown: a `<` outside code spans (`<run directory>`) shown, not read as an HTML tag."""
    parts = text.split("`")
    return "`".join(part if i % 2 else part.replace("<", "&lt;") for i, part in enumerate(parts))


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


def _anchor(name: str) -> str:
    return f"lightft-{name}"


def _table(rows: list[Option], first: str = "option") -> list[str]:
    header = [f"| {first} | type | default | description |", "|---|---|---|---|"]
    return [*header, *(option.row() for option in rows)] if rows else ["(no options of its own)"]


def _fit_sections(parser: argparse.ArgumentParser) -> Iterator[str]:
    """Top-level keys, then lightft's groups (checkpoint, preemption, ...), each with its options."""
    rows = [o for o in options(parser) if o.name.split(".")[0].removeprefix("--") not in LIGHTNING_KEYS]
    yield from ["Top-level options:", "", *_table([o for o in rows if "." not in o.name]), ""]
    titles = {key: group.title for key, group in parser.groups.items()}
    for key in dict.fromkeys(o.name.removeprefix("--").split(".")[0] for o in rows if "." in o.name):
        yield from [
            f"`--{key}.*`: {_text(titles[key])}." if titles.get(key) else f"`--{key}.*`:",
            "",
            *_table([o for o in rows if o.name.startswith(f"--{key}.")]),
        ]
        yield ""
    yield (
        "`--trainer.*` are Lightning's `Trainer` arguments; `--model` and `--data` take a class (by `class_path`) and "
        "its `init_args`: lightft's are listed under [Modules and data modules](#modules-and-data-modules). "
        "`lightft fit --help` lists every trainer option, `lightft fit --model.help lightft.SFTModule` a class's, and "
        "`--print_config` the resolved values of a config."
    )


def _differences(name: str, base: str) -> Iterator[str]:
    """The options of command `name` that `lightft <base>` does not have as they are."""
    mine, theirs = options(command_parser(name)), set(options(command_parser(base)))
    extra = [option for option in mine if option not in theirs]
    if name in FIT_COMMANDS:
        yield f"Options: those of [`lightft {base}`](#{_anchor(base)}), except:"
    else:
        yield f"Reads the same configs as [`lightft {base}`](#{_anchor(base)}) and takes its options; its own:"
    yield from ["", *_table(extra)]
    missing = sorted({o.name for o in theirs} - {o.name for o in mine})
    if missing:
        yield from ["", "Not taken: " + ", ".join(f"`{n}`" for n in missing) + "."]


def _command(name: str) -> Iterator[str]:
    yield from [f'<a id="{_anchor(name)}"></a>', f"## `lightft {name}`", "", _text(COMMANDS[name]), ""]
    parser = command_parser(name)
    takes_fit = "trainer" in (getattr(parser, "groups", None) or {})
    if name == "fit":
        yield from _fit_sections(parser)
    elif takes_fit:
        yield from _differences(name, "fit")
    else:
        yield from _table(options(parser))
    yield ""


def module_classes() -> Iterator[type]:
    """The modules, then the data modules, that `lightft` exports."""
    import lightning.pytorch as pl

    import lightft

    public = [getattr(lightft, name) for name in lightft.__all__]
    classes = [c for c in public if inspect.isclass(c) and not inspect.isabstract(c)]
    yield from (c for c in classes if issubclass(c, lightft.LightFTModule) and c is not lightft.LightFTModule)
    yield from (c for c in classes if issubclass(c, pl.LightningDataModule))


def class_parser(cls: type) -> ArgumentParser:
    """A parser of `cls`'s init arguments, under `init_args` (as `--model.help CLASS` shows them)."""
    parser = ArgumentParser()
    parser.add_class_arguments(cls, "init_args", sub_configs=True)
    return parser


def _class(cls: type) -> Iterator[str]:
    parser = class_parser(cls)
    summary = (inspect.getdoc(cls) or "").split("\n\n")[0]
    yield from [f"### `lightft.{cls.__name__}`", "", _text(" ".join(summary.split())), ""]
    yield from [*_table(options(parser, prefix=""), first="key"), ""]


def cli_markdown() -> str:
    """docs/cli.md's text."""
    lines = [
        "# Command-line reference",
        "",
        "Generated by `python docs/make_cli.py` from the parsers that `lightft <command> --help` prints: do not edit "
        "by hand. Besides the options below, commands take `--config FILE` (their options as YAML; fit, validate, "
        "test, predict, estimate, bench and doctor stack several) and `--print_config` (print the resolved options "
        "and exit); `lightft pipeline --config` names the pipeline's own config. Types and defaults are "
        "jsonargparse's; `null` is Python's None.",
        "",
        "| command | what it does |",
        "|---|---|",
        *(f"| [`{name}`](#{_anchor(name)}) | {_text(text)} |" for name, text in COMMANDS.items()),
        "",
    ]
    for name in COMMANDS:
        lines += _command(name)
    lines += [
        "## Modules and data modules",
        "",
        "What `model:` and `data:` take under `init_args:` (`class_path: lightft.SFTModule`, ...). Nested keys are "
        "written `model.path` here, `model: {path: ...}` in YAML and `--model.model.path` on the command line.",
        "",
    ]
    for cls in module_classes():
        lines += _class(cls)
    return "\n".join(lines).rstrip() + "\n"
