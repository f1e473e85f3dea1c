"""Commands beside LightningCLI's: `lightft export` and `lightft generate` (typed by jsonargparse from signatures)."""

from __future__ import annotations

from jsonargparse import auto_cli


def run_command(name: str, args: list[str]) -> None:
    """Parse `args` against the command's signature and run it."""
    if name == "export":
        from lightft.commands.export import export as function
    else:
        from lightft.commands.generate import generate as function
    auto_cli(function, args=args, as_positional=False)
