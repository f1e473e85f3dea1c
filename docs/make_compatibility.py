"""Writes docs/compatibility.md from lightft's config-time checks (run: python docs/make_compatibility.py)."""

from pathlib import Path

from lightft.compat import compatibility_markdown

if __name__ == "__main__":
    (Path(__file__).parent / "compatibility.md").write_text(compatibility_markdown())
