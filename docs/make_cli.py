"""Writes docs/cli.md from the commands' own parsers (run: python docs/make_cli.py)."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a parser is built, no model is looked up

from lightft.commands.reference import cli_markdown  # noqa: E402

if __name__ == "__main__":
    (Path(__file__).parent / "cli.md").write_text(cli_markdown())
