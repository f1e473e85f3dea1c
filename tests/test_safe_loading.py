"""Safe loading: every checkpoint is read with `weights_only=True` (DeepSpeed's files checked the same way before
DeepSpeed unpickles them), a file holding pickled objects is refused with one line, exports are safetensors, and
remote code runs only when the config says so, loudly."""

from __future__ import annotations

import argparse
import logging

import pytest
import torch

from lightft.cli import main
from lightft.models.loading import ModelSpec, load_config
from lightft.strategies import check_deepspeed_files
from tests.conftest import ROOT

TINY = str(ROOT / "configs" / "debug" / "tiny.yaml")


@pytest.fixture
def evil(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": argparse.Namespace(run="rm -rf ~")}, path)
    return path


def _error(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_resuming_from_a_pickle_is_refused(tmp_path, capsys, evil):
    line = _error(capsys, "fit", "--config", TINY, "--trainer.default_root_dir", str(tmp_path / "run"),
                  "--ckpt_path", str(evil))  # fmt: skip
    assert line.startswith(f"lightft: error: --ckpt_path: '{evil}' holds pickled Python objects (argparse.Namespace)")
    assert "--weights_only false" in line


def test_exporting_a_pickle_is_refused(tmp_path, capsys, evil):
    line = _error(capsys, "export", "--ckpt", str(evil), "--out", str(tmp_path / "out"))
    assert line.startswith(f"lightft: error: --ckpt: '{evil}' holds pickled Python objects (argparse.Namespace)")
    assert not (tmp_path / "out").exists()


def test_a_missing_checkpoint_is_one_line_and_writes_nothing(tmp_path, capsys):
    line = _error(capsys, "fit", "--config", TINY, "--trainer.default_root_dir", str(tmp_path / "run"),
                  "--ckpt_path", str(tmp_path / "nope.ckpt"))  # fmt: skip
    assert line.startswith(f"lightft: error: --ckpt_path: checkpoint '{tmp_path / 'nope.ckpt'}' not found")
    assert not (tmp_path / "run").exists()


def test_a_truncated_checkpoint_is_one_line(tmp_path, capsys):
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1000)}}, good)
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(good.read_bytes()[:2000])  # what a non-atomic save cut short would leave
    line = _error(capsys, "export", "--ckpt", str(bad), "--out", str(tmp_path / "out"))
    assert line.startswith(f"lightft: error: --ckpt: '{bad}' is not a readable checkpoint (PytorchStreamReader")


def test_deepspeed_files_are_checked_before_deepspeed_unpickles_them(tmp_path):
    from deepspeed.runtime.zero.config import ZeroStageEnum

    (tmp_path / "checkpoint").mkdir()
    torch.save({"ds_version": "0.19", "zero_stage": ZeroStageEnum.gradients, "w": torch.ones(2)},
               tmp_path / "checkpoint" / "optim_states.pt")  # fmt: skip
    check_deepspeed_files(tmp_path)  # DeepSpeed's own classes are allowed
    torch.save({"payload": argparse.Namespace()}, tmp_path / "checkpoint" / "zero_pp_rank_1_model_states.pt")
    with pytest.raises(Exception, match="argparse.Namespace"):
        check_deepspeed_files(tmp_path)


def test_trust_remote_code_is_off_by_default_and_loud_when_on(caplog):
    assert ModelSpec("x").trust_remote_code is False
    with caplog.at_level(logging.WARNING):
        load_config(ModelSpec(str(ROOT / "tests" / "assets" / "tiny-llama"), trust_remote_code=True))
    assert "trust_remote_code=True: executing model code shipped with" in caplog.text
