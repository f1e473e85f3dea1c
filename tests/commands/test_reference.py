"""`lightft.commands.reference`: docs/cli.md is current, names every command of `COMMANDS`, and every option of
every command (Lightning's trainer keys aside) and of every module and data module has a type and a doc, as
`lightft <command> --help` shows them."""

import re

import pytest

from lightft.commands import COMMANDS
from lightft.commands.reference import (
    LIGHTNING_KEYS,
    class_parser,
    cli_markdown,
    command_parser,
    module_classes,
    options,
)
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def markdown() -> str:
    return cli_markdown()


def test_cli_doc_is_current(markdown):
    assert (ROOT / "docs" / "cli.md").read_text() == markdown, "docs/cli.md is stale: run python docs/make_cli.py"


def test_the_reference_names_every_command_and_nothing_of_this_machine(markdown):
    for name in COMMANDS:
        assert f"## `lightft {name}`" in markdown and f"(#lightft-{name})" in markdown
    assert str(ROOT) not in markdown and not re.search(r" at 0x[0-9a-f]+", markdown)  # no paths, no object ids


def lightft_options(name):
    return [o for o in options(command_parser(name)) if o.name.removeprefix("--").split(".")[0] not in LIGHTNING_KEYS]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_option_of_a_command_has_a_type_and_a_doc(name):
    found = lightft_options(name)
    assert found or name == "pipeline"
    assert [o.name for o in found if not (o.type and o.doc)] == []


@pytest.mark.parametrize("cls", list(module_classes()), ids=lambda cls: cls.__name__)
def test_every_init_arg_of_a_module_or_data_module_has_a_type_and_a_doc(cls):
    found = options(class_parser(cls), prefix="")
    assert found and [o.name for o in found if not (o.type and o.doc)] == []


def test_lightft_groups_of_fit_are_listed(markdown):
    fit = markdown.split("## `lightft fit`")[1].split("\n## ")[0]
    groups = {o.name.removeprefix("--").split(".")[0] for o in lightft_options("fit") if "." in o.name}
    assert {"checkpoint", "preemption", "nonfinite", "samples"} <= groups
    for group in groups:
        assert f"`--{group}.*`" in fit
    assert "`--overwrite`" in fit and "`--trainer.max_steps`" not in fit  # Lightning's trainer: see --help
