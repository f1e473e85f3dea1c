"""The extension promise: a user's SFTModule subclass and a user's own PEFT strategy, named by class_path."""

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
