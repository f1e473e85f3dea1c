"""Commands beside LightningCLI's: `lightft estimate`, `bench`, `doctor`, `export` and `generate`.

`export` and `generate` are typed by jsonargparse from their signatures; `estimate`, `bench` and `doctor` read
`lightft fit`'s arguments.
"""

from __future__ import annotations

from jsonargparse import auto_cli


def run_command(name: str, args: list[str]) -> None:
    """Parse `args` against the command's signature and run it."""
    if name in ("estimate", "bench", "doctor"):  # they take `lightft fit`'s config arguments (LightningCLI's parser)
        from lightft.commands import bench, doctor, estimate

        return {"estimate": estimate, "bench": bench, "doctor": doctor}[name].main(args)
    if name == "export":
        from lightft.commands.export import export as function
    else:
        from lightft.commands.generate import generate as function
    auto_cli(function, args=args, as_positional=False)
