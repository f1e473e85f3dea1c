"""Early stopping and best.ckpt through `lightft fit` on the tiny model: a run whose val/loss stalls stops early and
says why; best.ckpt holds the step of the best logged val/loss and exports differently from last.ckpt; a run
preempted where a validation follows resumes to the same stop, best step and weights; a resumed stopped run stops
at once unless its patience was raised; a monitor the run never logs is one line before anything is written.
"""  # noqa: D205

from __future__ import annotations

import json
import logging
import os
import signal

import lightning.pytorch as pl
import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightft.cli import main
from tests.conftest import ROOT

CONFIGS = ROOT / "configs" / "debug"
# val/loss stalls by construction: any change under min_delta 1.0 is no improvement, so the third validation stops
# the run (step 6 of 24); a high learning rate makes val/loss move, so best.ckpt (no min_delta) is a real choice
# (measured: 6.000, 6.022, 6.013 at steps 2, 4, 6)
STALLS = ["--config", str(CONFIGS / "tiny.yaml"), "--trainer.max_steps", "24", "--trainer.val_check_interval", "2",
          "--model.init_args.optimizer.lr", "0.05", "--samples.prompts", "0", "--early_stopping.monitor", "val/loss",
          "--early_stopping.patience", "2", "--early_stopping.min_delta", "1.0"]  # fmt: skip
STOP = 6


class SignalAt(pl.Callback):
    """Sends SIGTERM to this process just before micro-batch `batch` (0-based) starts."""

    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGTERM)


class Messages(logging.Handler):
    """Lightning's info lines (`rank_zero_info`), collected."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def fit(run, *extra: str) -> list[str]:
    """`lightft fit` in this process; the info lines it logged."""
    logger, handler = logging.getLogger("lightning.pytorch"), Messages()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        main(["fit", *STALLS, "--trainer.default_root_dir", str(run), *extra])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return handler.lines


def checkpoint(run, name: str) -> dict:
    return torch.load(run / "checkpoints" / f"{name}.ckpt", weights_only=True)


def val_losses(run) -> dict[int, float]:
    """Optimizer step -> logged val/loss (TensorBoard counts steps from 0)."""
    events = EventAccumulator(str(run))
    events.Reload()
    return {event.step + 1: event.value for event in events.Scalars("val/loss")}


def state(ckpt: dict, name: str) -> dict:
    return next(value for key, value in ckpt["callbacks"].items() if key.startswith(name))


@pytest.fixture(scope="module")
def stalled(tmp_path_factory):
    run = tmp_path_factory.mktemp("stalled") / "run"
    return run, fit(run)


def test_a_stalled_metric_stops_the_run_and_says_why(stalled):
    run, lines = stalled
    assert checkpoint(run, "last")["global_step"] == STOP
    assert sorted(val_losses(run)) == [2, 4, 6]
    reason = f"lightft: early stopping after step {STOP}: val/loss did not improve by more than 1 in the last 2 "
    assert any(line.startswith(reason) for line in lines), lines


def test_best_ckpt_holds_the_step_of_the_best_logged_value(stalled):
    run, lines = stalled
    history = val_losses(run)
    best_step = min(history, key=history.get)
    assert best_step < STOP  # the last validation is not the best: best.ckpt and last.ckpt differ
    best = checkpoint(run, "best")
    assert best["global_step"] == best_step
    recorded = state(checkpoint(run, "last"), "BestCheckpoint")  # last.ckpt knows the best, for a resume
    assert recorded["best_step"] == best_step
    assert float(recorded["best_model_score"]) == pytest.approx(history[best_step], abs=1e-5)
    assert any(f"best.ckpt holds step {best_step} (val/loss" in line for line in lines), lines
    assert sorted(p.name for p in (run / "checkpoints").glob("best*")) == ["best.ckpt"]


def test_export_best_and_last_by_name(stalled, tmp_path):
    run, _ = stalled
    for name in ("best", "last"):
        main(["export", "--ckpt", name, "--run", str(run), "--out", str(tmp_path / name)])
        metadata = json.loads((tmp_path / name / "lightft.json").read_text())
        assert metadata["checkpoint"] == str(run / "checkpoints" / f"{name}.ckpt")
    best, last = (load_file(tmp_path / name / "adapter_model.safetensors") for name in ("best", "last"))
    assert best.keys() == last.keys() and any(not torch.equal(best[k], last[k]) for k in best)


def test_generate_reads_the_best_checkpoint_by_name(stalled, capsys):
    run, _ = stalled
    main(["generate", "--model", "best", "--run", str(run), "--prompt", "hi", "--max_new_tokens", "2"])
    assert f"loaded {run / 'checkpoints' / 'best.ckpt'} on cpu" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("command", "args", "message"),
    [
        ("eval", ["--model", "best", "--data", "x.jsonl"], "--model best: name the run: --run runs/<name>"),
        ("generate", ["--model", "best", "--run", "RUN", "--prompt", "hi"], "--model best: 'RUN/checkpoints/best.ckpt"),
        ("chat", ["--model", "last", "--run", "RUN/nowhere"], "--run: 'RUN/nowhere' is not a directory"),
        ("quantize", ["--ckpt", "best", "--out", "RUN/q"], "--ckpt best: name the run"),
        ("quantize", ["--run", "RUN", "--out", "RUN/q"], "--run: read only with --ckpt best or --ckpt last"),
    ],
    ids=["eval-no-run", "generate-no-best", "chat-no-run-dir", "quantize-no-run", "quantize-run-alone"],
)  # fmt: skip
def test_every_command_that_reads_a_checkpoint_takes_it_by_name(tmp_path, capsys, command, args, message):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main([command, *(a.replace("RUN", str(tmp_path)) for a in args)])
    assert exit_info.value.code == 2
    assert message.replace("RUN", str(tmp_path)) in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def preempted(tmp_path_factory):
    """The stalled run, sent SIGTERM during step 4 (a validation follows it), then resumed; the first run's lines."""
    run = tmp_path_factory.mktemp("preempted") / "run"
    signaller = {"class_path": f"{__name__}.SignalAt", "init_args": {"batch": 3}}
    lines = fit(run, f"--trainer.callbacks+={json.dumps(signaller)}")
    first = checkpoint(run, "last"), sorted(val_losses(run))
    fit(run, "--ckpt_path", str(run / "checkpoints" / "last.ckpt"))
    return run, lines, first


def test_preempted_where_a_validation_follows_resumes_to_the_same_stop(stalled, preempted):
    run, lines, (saved, validated) = preempted
    # the checkpoint waited for step 5, after the validation of step 4; nothing was validated after it
    assert any(line.startswith("lightft: SIGTERM received; stopped after step 5") for line in lines), lines
    assert saved["global_step"] == 5 and validated == [2, 4]
    assert state(saved, "EarlyStop")["wait_count"] == 1  # the validation of step 4 was counted
    for name in ("last", "best"):
        resumed, uninterrupted = checkpoint(run, name), checkpoint(stalled[0], name)
        assert resumed["global_step"] == uninterrupted["global_step"], name
        for key, value in uninterrupted["state_dict"].items():
            assert torch.equal(resumed["state_dict"][key], value), (name, key)


def test_a_stopped_run_resumed_stops_at_once_unless_its_patience_is_raised(preempted):
    run = preempted[0]
    resume = ["--ckpt_path", str(run / "checkpoints" / "last.ckpt")]
    lines = fit(run, *resume)
    assert any("this run already stopped" in line for line in lines), lines
    assert checkpoint(run, "last")["global_step"] == STOP
    fit(run, *resume, "--early_stopping.patience", "3")  # one more validation without improvement
    assert checkpoint(run, "last")["global_step"] == STOP + 2


PPO = [
    "--config",
    str(CONFIGS / "tiny_ppo.yaml"),
    "--trainer.limit_val_batches",
    "1.0",
    "--data.init_args.val_fraction",
    "0.1",
]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([*STALLS, "--early_stopping.monitor", "val/acc"],
         "--early_stopping.monitor: SFTModule's validation does not log 'val/acc'; it logs val/loss, val/ppl"),
        ([*STALLS, "--best.monitor", "val/accuracy"],
         "--best.monitor: SFTModule's validation does not log 'val/accuracy'"),
        ([*PPO, "--early_stopping.monitor", "val/loss"],
         "--early_stopping.monitor: PPOModule's validation does not log 'val/loss'; it logs eval/reward_mean"),
        ([*STALLS, "--data.init_args.val", "null"],
         "--early_stopping.monitor: 'val/loss' is a validation metric, but this run has no validation data"),
        ([*STALLS, "--trainer.limit_val_batches", "0"],
         "--early_stopping.monitor: 'val/loss' is a validation metric, but validation is off"),
    ],
    ids=["early-stopping-key", "best-key", "ppo-has-no-val-loss", "no-validation-data", "validation-off"],
)  # fmt: skip
def test_a_monitor_the_run_never_logs_is_one_line_before_anything_is_written(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--trainer.default_root_dir", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"lightft: error: {message}"), err
    assert not (tmp_path / "run").exists()


def test_export_by_name_names_the_fix(tmp_path, capsys):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    cases = [
        (["--ckpt", "best"], "--ckpt best: name the run: --run runs/<name>"),
        (["--ckpt", "best", "--run", str(tmp_path / "run")], "the run never validated on its best.monitor metric"),
        (["--ckpt", "last", "--run", str(tmp_path / "nowhere")], "--run: '"),
        (["--ckpt", str(tmp_path / "x.ckpt"), "--run", str(tmp_path / "run")], "--run: read only with --ckpt best"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(["export", *args, "--out", str(tmp_path / "out")])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err.strip().splitlines()[-1], args
