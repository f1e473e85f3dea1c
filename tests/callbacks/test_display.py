"""What a run prints (`lightft/callbacks/display.py`): with `max_steps` only the progress bar counts steps to
`max_steps` (never "Epoch 0/-2") at a speed that means something, the model summary has no FLOPs column or
"Total FLOPs: 0" unless Lightning measured them, and `lightft fit` uses both in place of Lightning's defaults."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from lightft.callbacks import display
from lightft.callbacks.display import ParameterSummary, StepProgressBar
from tests.conftest import ROOT

TINY = str(ROOT / "configs" / "debug" / "tiny.yaml")
MODES = {"train": 3, "eval": 0}


def bar(max_epochs: int, max_steps: int) -> StepProgressBar:
    """The bar as a Trainer with these limits sees it (Lightning sets max_epochs -1 when only max_steps is given)."""
    progress = StepProgressBar()
    progress._trainer = SimpleNamespace(max_epochs=max_epochs, max_steps=max_steps, num_training_batches=100)
    return progress


def test_with_max_steps_only_the_bar_counts_steps_to_max_steps():
    progress = bar(max_epochs=-1, max_steps=30)
    assert progress.total_train_batches == 30
    assert progress._get_train_description(0).strip() == "Epoch 0 · steps"


@pytest.mark.parametrize(
    ("max_epochs", "max_steps", "description"),
    [(3, -1, "Epoch 0/2"), (3, 30, "Epoch 0/2"), (-1, -1, "Epoch 0")],  # epochs bound it / nothing does
)
def test_otherwise_the_bar_counts_the_epochs_batches(max_epochs, max_steps, description):
    progress = bar(max_epochs, max_steps)
    assert progress.total_train_batches == 100
    assert progress._get_train_description(0).strip() == description


@pytest.mark.parametrize(("speed", "shown"), [(None, ""), (2.5, "2.50it/s"), (0.25, "4.0s/it")])
def test_the_speed_reads_in_seconds_per_step_when_slow_and_is_empty_while_unknown(speed, shown):
    task = SimpleNamespace(finished_speed=None, speed=speed)
    assert display.Speed("").render(task).plain == shown


def summary_data(flops: str) -> list[tuple[str, list[str]]]:
    names = [" ", "Name", "Type", "Params", "Mode", "FLOPs"]
    return list(zip(names, [["0"], ["model"], ["Linear"], ["1.1 K"], ["train"], [flops]], strict=True))


@pytest.mark.parametrize("rich", [True, False])
def test_the_summary_shows_flops_only_when_measured(rich, monkeypatch, capsys, caplog):
    monkeypatch.setattr(display, "_RICH_AVAILABLE", rich)
    caplog.set_level(logging.INFO)
    texts = []
    for flops in (0, 2_048):
        ParameterSummary.summarize(summary_data(str(flops)), 1100, 1100, 0.0044, MODES, flops)
        texts.append(capsys.readouterr().out + caplog.text)
        caplog.clear()
    unmeasured, measured = texts
    assert "Trainable params" in unmeasured and "Modules in train mode" in unmeasured
    assert "FLOPs" not in unmeasured and "Flops" not in unmeasured
    assert "FLOPs" in measured or "Flops" in measured


def test_a_fit_with_max_steps_only_prints_steps_and_no_flops(tmp_path):
    # a callback of the config's own beside them: the Trainer's defaults are still replaced
    words = [sys.executable, "-m", "lightft.cli", "fit", "--config", TINY, "--trainer.default_root_dir",
             str(tmp_path / "run"), "--trainer.max_steps", "2", "--trainer.enable_model_summary", "true",
             "--trainer.callbacks+=lightning.pytorch.callbacks.LambdaCallback"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120"}
    result = subprocess.run(words, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert "Epoch 0 · steps" in out and "2/2" in out, out[-2000:]
    assert "/-2" not in out and "FLOPs" not in out and "Total Flops" not in out, out[-2000:]
    assert "Trainable params" in out  # the summary itself is still there
