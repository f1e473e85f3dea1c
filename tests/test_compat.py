"""Config-time compatibility: impossible combinations fail before data is read or weights are loaded."""

import pytest

from tests.test_cli import TINY, fails


def fit_args(tmp_path, *extra):
    # a data file that does not exist: a config-time error must come first
    return ["fit", "--config", TINY, "--trainer.default_root_dir", str(tmp_path / "run"),
            "--data.init_args.train", str(tmp_path / "absent.jsonl"), *extra]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--model.init_args.peft", "lightft.peft.PrefixTuning", "--model.init_args.gradient_checkpointing", "true"],
         "model.init_args.gradient_checkpointing: PrefixTuning does not work with activation checkpointing"),
        (["--model.init_args.peft", "lightft.peft.PromptTuning", "--data.init_args.packing", "true"],
         "data.init_args.packing: PromptTuning prepends virtual tokens"),
        (["--model.init_args.peft", "lightft.peft.PTuning", "--data.init_args.packing", "true"],
         "data.init_args.packing: PTuning"),
        (["--model.init_args.peft.init_args.target_modules", "[query]"],
         r"target_modules: \['query'\] match no linear layer"),
        (["--model.init_args.peft.init_args.target_modules", "attention_only"],
         "pattern 'attention_only' matches no linear layer"),
        (["--model.init_args.peft", "lightft.peft.IA3", "--model.init_args.peft.init_args.target_modules", "[k_proj]",
          "--model.init_args.peft.init_args.feedforward_modules", "[down_proj]"],
         r"feedforward_modules: \['down_proj'\] are not among the target_modules"),
    ],
)  # fmt: skip
def test_impossible_combinations_fail_first(tmp_path, capsys, extra, expected):
    import re

    line = fails(capsys, *fit_args(tmp_path, *extra))
    assert re.search(expected, line), line
    assert not (tmp_path / "run").exists()


def test_a_possible_combination_reaches_the_data(tmp_path, capsys):
    line = fails(capsys, *fit_args(tmp_path, "--model.init_args.peft", "lightft.peft.PrefixTuning"))
    assert "absent.jsonl' not found" in line


def test_python_api_runs_the_same_checks(tmp_path, tiny_spec):
    import lightning.pytorch as pl

    from lightft import SFTDataModule, SFTModule
    from lightft.errors import LightFTError
    from lightft.peft import PromptTuning
    from tests.conftest import QUICKSTART

    module = SFTModule(tiny_spec, peft=PromptTuning(num_virtual_tokens=2), gradient_checkpointing=False)
    data = SFTDataModule(train=str(QUICKSTART / "train.jsonl"), tokenizer=tiny_spec, packing=True)
    with pytest.raises(LightFTError, match="packing"):
        pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, use_distributed_sampler=False,
                   default_root_dir=tmp_path).fit(module, data)  # fmt: skip
    assert module.model is None  # nothing was loaded
