"""`lightft pipeline --config configs/pipeline/rlhf_smollm2.yaml`: run a pipeline's stages (`lightft.pipeline`)."""

from __future__ import annotations

from jsonargparse import ArgumentParser

from lightft.pipeline import load, run


def main(args: list[str]) -> None:
    """Parse `lightft pipeline`'s options and run the pipeline."""
    parser = ArgumentParser(prog="lightft pipeline", description=__doc__, exit_on_error=False)
    parser.add_argument("--config", type=str, required=True, help="The pipeline config (stages, eval, root).")
    parser.add_argument("--root", type=str | None, default=None, help="Write stages here instead of the config's root.")
    options = parser.parse_args(args)
    run(load(options.config, options.root))
