"""`lightft.commands.fit`: the commands never import the console script (no import cycle), the parse-only CLI
separates a command's own options from `lightft fit`'s arguments, and `lightft.cli`'s old names still import."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.conftest import ROOT

COMMANDS_DIR = ROOT / "lightft" / "commands"
MODULES = sorted(f"lightft.commands.{p.stem}" for p in COMMANDS_DIR.glob("*.py") if p.stem != "__init__")
TINY = str(ROOT / "configs" / "debug" / "tiny.yaml")


def _imports_of(path) -> set[str]:
    """Every module an `import` or `from ... import` names in the file, at any depth (functions included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_found_the_command_modules():
    assert {"lightft.commands.fit", "lightft.commands.estimate", "lightft.commands.bench"} <= set(MODULES)


@pytest.mark.parametrize("path", sorted(COMMANDS_DIR.glob("*.py")), ids=lambda p: p.name)
def test_no_command_module_imports_the_console_script(path):
    assert not {"lightft.cli", "lightft.cli.main"} & _imports_of(path), f"{path.name} imports lightft.cli"


def test_importing_and_parsing_with_the_commands_never_loads_the_console_script():
    code = f"""
import sys
for name in {MODULES!r}:
    __import__(name)
from lightft.commands.estimate import parse_fit_args
module, data, trainer = parse_fit_args(["--config", {TINY!r}])
assert type(module).__name__ == "SFTModule", module
loaded = sorted(m for m in sys.modules if m == "lightft.cli")
print("loaded:", loaded)
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded: []" in result.stdout


def test_the_console_script_still_exports_its_old_names():
    from lightft import cli
    from lightft.commands import fit

    for name in ("LightFTCLI", "RunDirectory", "check_config_files", "check_ckpt_path", "TRAINER_DEFAULTS"):
        assert getattr(cli, name) is getattr(fit, name)
    assert callable(cli.main) and callable(cli.config_error)


def test_own_options_are_parsed_and_the_rest_is_fit_arguments():
    from lightft.commands import estimate
    from lightft.commands.fit import ParseOnlyCLI

    args = ["--json", "--config", TINY, "--devices=2", "--trainer.max_steps", "3", "--gpu_memory", "8.5",
            "--model.init_args.peft.init_args.r=4", "--num_nodes", "2"]  # fmt: skip
    cli = ParseOnlyCLI(args, "estimate", estimate.add_arguments, instantiate=False)
    assert (cli.config.json, cli.config.devices, cli.config.gpu_memory, cli.config.num_nodes) == (True, 2, 8.5, 2)
    assert cli.config.trainer.max_steps == 3 and cli.config.model.init_args.peft.init_args.r == 4
    assert cli.fit_arguments(args) == ["--config", TINY, "--trainer.max_steps", "3",
                                       "--model.init_args.peft.init_args.r=4"]  # fmt: skip
    explicit = ["--config", TINY, "--json", "false"]
    cli = ParseOnlyCLI(explicit, "estimate", estimate.add_arguments, instantiate=False)
    assert cli.config.json is False and cli.fit_arguments(explicit) == ["--config", TINY]


def test_abbreviated_options_are_refused_not_guessed():
    from jsonargparse import ArgumentError

    from lightft.commands import bench
    from lightft.commands.fit import ParseOnlyCLI

    with pytest.raises(ArgumentError, match="--step"):
        ParseOnlyCLI(["--config", TINY, "--step", "4"], "bench", bench.add_arguments, instantiate=False)


@pytest.mark.parametrize("command", ["fit", "validate", "test", "predict"])
def test_help_opens_with_lightfts_description_of_the_command(command, capsys):
    from lightft.cli import main
    from lightft.commands import FIT_COMMANDS

    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert FIT_COMMANDS[command] in " ".join(capsys.readouterr().out.split())  # help wraps lines
