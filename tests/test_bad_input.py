"""Bad input beyond SFT data (tests/test_cli.py has those): preference, KTO and prompt-only data, reward functions
that raise or answer in the wrong shape, configs naming classes that do not exist. Each is one line on stderr that
names the file and row or the config key and says what to do, exit status 2, and an earlier run's directory is
left exactly as it was."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lightft.cli import main
from tests.conftest import ROOT, write_jsonl

CONFIGS = ROOT / "configs" / "debug"


def fails(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]
    assert last.startswith("lightft: error:"), err
    return last


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory) -> Path:
    """A finished DPO run that every failing command below points at with `--overwrite false` (the default)."""
    run = tmp_path_factory.mktemp("earlier") / "run"
    main(["fit", "--config", str(CONFIGS / "tiny_dpo.yaml"), "--trainer.default_root_dir", str(run),
          "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0"])  # fmt: skip
    return run


PAIRS = [
    ([{"prompt": "a", "chosen": "x", "rejected": "y"}, {"prompt": "b", "chosen": "x"}],
     r"bad\.jsonl:2: field 'rejected' is missing or null"),
    ([{"prompt": "a", "chosen": "same", "rejected": "same"}], r"bad\.jsonl:1: 'chosen' and 'rejected' are identical"),
    ([{"prompt": "a", "chosen": [{"role": "assistant", "content": "x"}], "rejected": "y"}],
     r"bad\.jsonl:1: field 'prompt' must be a non-empty list of \{role, content\} messages"),
    ([{"chosen": "same text", "rejected": "same text, longer"}],
     r"bad\.jsonl:1: 'chosen' and 'rejected' share no prompt"),
    ([{"prompt": "a", "completion": "x", "label": "yes"}], r"bad\.jsonl:1: field 'label' must be true .* or false"),
    ([{"prompt": "a", "completion": None, "label": True}], r"bad\.jsonl:1: field 'completion' is missing or null"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("rows", "expected"), PAIRS, ids=["missing", "identical", "mixed", "implicit", "label", "null"]
)
def test_bad_preference_and_kto_rows(tmp_path, capsys, earlier_run, rows, expected):
    before = snapshot(earlier_run)
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    loss = ["--model.init_args.loss", "lightft.losses.KTOLoss"] if "label" in rows[0] else []
    line = fails(capsys, "fit", "--config", str(CONFIGS / "tiny_dpo.yaml"), *loss, "--data.init_args.train", str(data),
                 "--data.init_args.val", "null", "--trainer.default_root_dir", str(tmp_path / "run"))  # fmt: skip
    assert re.search(expected, line), line
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert snapshot(earlier_run) == before


@pytest.mark.parametrize(
    ("rows", "expected"),
    [([{"prompt": "hi"}, {"prompt": "  "}], r"bad\.jsonl:2: field 'prompt' is empty"),
     ([{"prompt": 3}], r"bad\.jsonl:1: field 'prompt' must be a string, got int"),
     ([{"text": "hello"}], r"cannot tell the format from the columns \['text'\]")],
    ids=["empty", "number", "no-prompt"],
)  # fmt: skip
def test_bad_prompt_only_rows(tmp_path, capsys, rows, expected):
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    line = fails(capsys, "fit", "--config", str(CONFIGS / "tiny_ppo.yaml"), "--data.init_args.train", str(data),
                 "--trainer.default_root_dir", str(tmp_path / "run"))  # fmt: skip
    assert re.search(expected, line), line


@pytest.mark.parametrize(
    ("reward", "expected"),
    [("tests.helpers.extensions.BrokenReward",
      r"^lightft: error: model\.init_args\.reward \(BrokenReward\): raised ValueError: .*; fix the reward function\.$"),
     ("tests.helpers.extensions.ShortReward",
      r"^lightft: error: model\.init_args\.reward \(ShortReward\): returned shape \(1,\) for 8 completions; "
      r"return one float per completion\.$")],
    ids=["raises", "wrong-shape"],
)  # fmt: skip
def test_reward_functions_that_misbehave(tmp_path, capsys, reward, expected):
    """Any class with the protocol's `__call__` is accepted, whatever its annotations (here `-> list[float]`)."""
    line = fails(capsys, "fit", "--config", str(CONFIGS / "tiny_ppo.yaml"), "--model.init_args.reward", reward,
                 "--trainer.default_root_dir", str(tmp_path / "run"))  # fmt: skip
    assert re.search(expected, line), line
    assert not list((tmp_path / "run").rglob("*.ckpt"))


IMPORT = r"; check the class_path spelling, or install the package that defines it\.$"
MISSING = [
    ("tiny", ["--model.init_args.peft", "lightft.peft.NoSuchLoRA"],
     r"^lightft: error: model\.init_args\.peft: cannot import 'lightft\.peft\.NoSuchLoRA' "
     r"\(module 'lightft\.peft' has no attribute 'NoSuchLoRA'\)" + IMPORT),
    ("tiny", ["--model", "mypkg.MyModule"],
     r"^lightft: error: model: cannot import 'mypkg\.MyModule' \(No module named 'mypkg'\)" + IMPORT),
    ("tiny", ["--config", "YAML"],
     r"^lightft: error: model\.init_args\.peft: cannot import 'my_peft\.Adapter' "
     r"\(No module named 'my_peft'\)" + IMPORT),
    ("tiny_ppo", ["--model.init_args.reward", "tests.helpers.extensions.MisnamedReward"],
     r"^lightft: error: model\.init_args\.reward: 'tests\.helpers\.extensions\.MisnamedReward' does not "
     r"implement RewardFunction: its methods must take the protocol's parameters"),
]  # fmt: skip


@pytest.mark.parametrize(("config", "args", "expected"), MISSING, ids=["attribute", "module", "yaml", "protocol"])
def test_configs_naming_missing_classes(tmp_path, capsys, earlier_run, config, args, expected):
    before = snapshot(earlier_run)
    if args == ["--config", "YAML"]:
        extra = tmp_path / "extra.yaml"
        extra.write_text("model:\n  init_args:\n    peft:\n      class_path: my_peft.Adapter\n")
        args = ["--config", str(extra)]
    line = fails(capsys, "fit", "--config", str(CONFIGS / f"{config}.yaml"), *args,
                 "--trainer.default_root_dir", str(earlier_run))  # fmt: skip
    assert re.search(expected, line), line
    assert snapshot(earlier_run) == before


LATIN1 = "caf\u00e9".encode("latin-1")  # b"caf\xe9": Latin-1, not UTF-8
NOT_UTF8 = {
    "tiny": ("latin1.csv", [b"prompt,completion", b"hi,yo", b"order one " + LATIN1 + b",done"]),
    "tiny_dpo": ("latin1.jsonl", [b'{"prompt": "a", "chosen": "x", "rejected": "y"}'] * 2
                 + [b'{"prompt": "' + LATIN1 + b'", "chosen": "x", "rejected": "y"}']),
    "tiny_ppo": ("latin1.json", [b"[", b'{"prompt": "hi"},', b'{"prompt": "' + LATIN1 + b'"}', b"]"]),
}  # fmt: skip


@pytest.mark.parametrize("config", sorted(NOT_UTF8))
def test_data_that_is_not_utf8_names_the_line_and_says_to_save_it_as_utf8(tmp_path, capsys, config):
    name, lines = NOT_UTF8[config]
    data = tmp_path / name
    data.write_bytes(b"\n".join(lines) + b"\n")
    val = [] if config == "tiny_ppo" else ["--data.init_args.val", "null"]
    line = fails(capsys, "fit", "--config", str(CONFIGS / f"{config}.yaml"), "--data.init_args.train", str(data),
                 *val, "--trainer.default_root_dir", str(tmp_path / "run"))  # fmt: skip
    expected = rf"^lightft: error: {re.escape(str(data))}:3: not UTF-8 text \(byte 0xe9 at offset \d+\); save the file"
    assert re.search(expected, line), line
    assert not list((tmp_path / "run").rglob("*.ckpt"))


def test_a_validation_interval_longer_than_an_epoch_says_how_to_count_it(tmp_path, capsys):
    """Lightning refuses `val_check_interval` beyond an epoch's batches mid-setup; lightft says it in one line."""
    last = fails(capsys, "fit", "--config", str(CONFIGS / "tiny.yaml"), "--trainer.default_root_dir", str(tmp_path),
                 "--data.init_args.train.max_examples", "8", "--trainer.val_check_interval", "20")  # fmt: skip
    want = r"trainer.val_check_interval: 20 batches, but an epoch has only 2; .*check_val_every_n_epoch: null"
    assert re.search(want, last), last
