"""The non-finite guard: a NaN loss or an inf gradient skips the update (weights and optimizer state untouched),
dumps the step's examples, and K bad steps in a row stop the run with a one-line error."""

from __future__ import annotations

import json
import subprocess
import sys

import lightning.pytorch as pl
import pytest
import torch

from lightft.callbacks import NonFiniteGuard
from lightft.errors import LightFTError
from lightft.optim import OptimizerConfig, SchedulerConfig
from lightft.peft import LoRA
from tests.conftest import ROOT
from tests.conftest import cpu_trainer as trainer
from tests.helpers.extensions import PoisonedSFT
from tests.modules.test_sft import datamodule


class WeightLog(pl.Callback):
    def __init__(self):
        self.after: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, idx):
        self.after.append({n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad})


def poisoned(spec, steps, where):
    return PoisonedSFT(
        spec,
        peft=LoRA(r=4, dropout=0.0),
        optimizer=OptimizerConfig(lr=1e-2),
        scheduler=SchedulerConfig(name="constant"),
        gradient_checkpointing=False,
        poison=steps,
        where=where,
    )


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_a_bad_step_is_skipped_and_its_examples_dumped(tmp_path, tiny_spec, where):
    guard, log = NonFiniteGuard(max_consecutive=2), WeightLog()
    module = poisoned(tiny_spec, [2, 4], where)
    trainer(tmp_path, max_steps=6, accumulate_grad_batches=2, callbacks=[guard, log]).fit(
        module, datamodule(tiny_spec, batch_size=2)
    )
    assert guard.skipped == 2 and guard.consecutive == 0
    after = log.after[1::2]  # the weights after each optimizer step (2 micro-batches each)
    for step in range(6):
        changed = any(not torch.equal(after[step][n], (after[step - 1] if step else after[0])[n]) for n in after[0])
        if step in (2, 4):
            assert not changed, step  # a skipped update leaves every weight as it was
        elif step:
            assert changed, step
    state = next(iter(module.trainer.optimizers[0].state.values()))
    assert int(state["step"]) == 4  # AdamW counted only the 4 real updates
    dump = json.loads((tmp_path / "nonfinite" / "step-2-rank0.json").read_text())
    assert dump["step"] == 2 and len(dump["micro_batches"]) == 2
    rows = [r for mb in dump["micro_batches"] for r in mb["rows"]]
    assert len(rows) == 4 and all(isinstance(r, list) for r in rows)  # dataset rows of each batch row
    first = dump["micro_batches"][0]
    assert len(first["input_ids"]) == 2 and len(first["labels"]) == 2  # the batch's fields as plain data
    assert first["normaliser"] == sum(label != -100 for mb in dump["micro_batches"] for row in mb["labels"]
                                      for label in row[1:])  # the step's trained tokens  # fmt: skip


def test_consecutive_bad_steps_stop_the_run(tmp_path, tiny_spec):
    guard = NonFiniteGuard(max_consecutive=3)
    with pytest.raises(LightFTError, match=r"^nonfinite.max_consecutive: stopped at step 3 after 3 non-finite"):
        trainer(tmp_path, max_steps=8, callbacks=[guard]).fit(
            poisoned(tiny_spec, [1, 2, 3], "loss"), datamodule(tiny_spec, batch_size=2)
        )
    assert len(guard.dumps) == 3


def test_the_cli_stops_with_one_line_and_the_checkpoints_stay_finite(tmp_path):
    args = [sys.executable, "-m", "lightft.cli", "fit", "--config", str(ROOT / "configs" / "debug" / "tiny.yaml"),
            "--model", "tests.helpers.extensions.PoisonedSFT", "--model.init_args.poison", "[3, 4]",
            "--nonfinite.max_consecutive", "2", "--checkpoint.every_n_train_steps", "2",
            "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("lightft: error: nonfinite.max_consecutive: stopped at step 4 after 2 non-finite"), last
    assert str(tmp_path / "nonfinite") in last
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 4  # written after the skipped step 3: the weights of step 2, finite
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values())
