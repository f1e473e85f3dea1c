"""Assessing a model on held-out data: reference metrics of its generated answers, loss, rewards, KL to a reference.

`lightft eval` (`lightft.commands.eval`) and `lightft pipeline`'s `eval` stages run `evaluate_model`.
"""

from lightft.evaluation.metrics import field_match, parse_object
from lightft.evaluation.run import EvalSettings, ModelReport, evaluate_model

__all__ = ["EvalSettings", "ModelReport", "evaluate_model", "field_match", "parse_object"]
