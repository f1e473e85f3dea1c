"""`lightft pipeline`: SFT -> reward model -> PPO / DPO / ORPO -> eval -> new pairs -> ..., from one config.

`config` reads and checks the stages, `runner` runs them (skipping finished ones, resuming a killed one),
`pairs` is the `generate_pairs` stage (new preference pairs from the current policy, ranked by a reward).
"""

from lightft.pipeline.config import EvalSpec, PipelineConfig, Stage, load
from lightft.pipeline.pairs import PairStats, generate_pairs
from lightft.pipeline.runner import run, table

__all__ = ["EvalSpec", "PairStats", "PipelineConfig", "Stage", "generate_pairs", "load", "run", "table"]
