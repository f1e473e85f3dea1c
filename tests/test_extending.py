"""The extension promise: a user's module subclass, own method and own PEFT strategy, named by class_path."""

import csv
import json
import os
import subprocess
import sys

import torch

from tests.conftest import ROOT


def run_cli(tmp_path, *args, config="configs/debug/tiny.yaml"):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the user's package is importable, as after `pip install`
    command = [sys.executable, "-m", "lightft.cli", "fit", "--config", config,
               "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.max_steps", "3", *args]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)


def test_subclassed_module_by_class_path(tmp_path):
    checkpoint = run_cli(tmp_path, "--model", "tests.helpers.extensions.ZLossSFT")
    assert checkpoint["hyper_parameters"]["_class_path"] == "tests.helpers.extensions.ZLossSFT"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run"))
    events.Reload()
    assert len(events.Scalars("train/z_loss")) == 3


def test_own_peft_strategy_by_class_path(tmp_path):
    checkpoint = run_cli(tmp_path, "--model.init_args.peft", "tests.helpers.extensions.TrainLastLayers")
    assert checkpoint["state_dict"] and all(k.startswith("model.model.layers.1.") for k in checkpoint["state_dict"])


def test_subclassed_dpo_module_by_class_path(tmp_path):
    checkpoint = run_cli(
        tmp_path, "--model", "tests.helpers.extensions.NLLRegularisedDPO", config="configs/debug/tiny_dpo.yaml"
    )
    assert checkpoint["hyper_parameters"]["_class_path"] == "tests.helpers.extensions.NLLRegularisedDPO"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run"))
    events.Reload()
    assert len(events.Scalars("train/chosen_nll")) == 3 and len(events.Scalars("rewards/margins")) == 3


def lightft(*args, cwd=ROOT):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "lightft.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def test_a_new_method_is_estimated_doctored_benched_fitted_and_exported(tmp_path):
    """A method declared only in the user's own file (`UnlikelihoodModule`: its `Method` on the class) goes
    through every command with no edit inside lightft.
    """
    config = ["--config", "configs/debug/tiny_dpo.yaml", "--model", "tests.helpers.extensions.UnlikelihoodModule"]
    estimate = lightft("estimate", *config, "--json")
    assert estimate.returncode == 0, estimate.stderr[-2000:]
    plan = json.loads(estimate.stdout)["plan"]
    assert plan["method"] == "UnlikelihoodModule" and plan["rows_per_example"] == 2 and plan["lm_logps"]

    doctor = lightft("doctor", *config)
    assert "fit together" in doctor.stdout, doctor.stdout[-2000:] + doctor.stderr[-2000:]
    assert "memory" in doctor.stdout and "UnlikelihoodModule" in doctor.stdout

    bench = lightft("bench", *config, "--synthetic", "false", "--steps", "2", "--out", str(tmp_path / "bench"))
    assert bench.returncode == 0, bench.stderr[-2000:]
    with open(tmp_path / "bench" / "bench.csv") as rows:
        assert [row["status"] for row in csv.DictReader(rows)] == ["ok"]

    checkpoint = run_cli(tmp_path, *config[2:], config=config[1])
    assert checkpoint["hyper_parameters"]["_class_path"] == "tests.helpers.extensions.UnlikelihoodModule"
    export = lightft("export", "--ckpt", str(tmp_path / "run" / "checkpoints" / "last.ckpt"), "--out",
                     str(tmp_path / "out"))  # fmt: skip
    assert export.returncode == 0, export.stderr[-2000:]
    assert json.loads((tmp_path / "out" / "lightft.json").read_text())["head"] == "causal_lm"


def test_a_method_without_a_declaration_is_refused_by_name(tmp_path):
    result = lightft("estimate", "--config", "configs/debug/tiny.yaml", "--model",
                     "tests.helpers.extensions.UndeclaredModule")  # fmt: skip
    assert result.returncode == 2
    assert "UndeclaredModule declares no `method" in result.stderr and "Traceback" not in result.stderr
