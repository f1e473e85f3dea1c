"""Writes docs/compatibility.md from lightft's config-time checks (run: python docs/make_compatibility.py)."""

from pathlib import Path

from lightft import DPOModule, PPOModule, RewardModelModule, SFTModule
from lightft.compat import compatibility_markdown

# each built-in method's declaration, as the checks read it (the first: the PEFT x strategy table's method)
METHODS = {cls.__name__: cls.method for cls in (SFTModule, RewardModelModule, DPOModule, PPOModule)}


def markdown() -> str:
    """docs/compatibility.md's text."""
    return compatibility_markdown(METHODS)


if __name__ == "__main__":
    (Path(__file__).parent / "compatibility.md").write_text(markdown())
