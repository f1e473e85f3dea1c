"""CLI smoke tests on configs/debug/tiny.yaml and the one-line errors for bad input."""

import json

import pytest
import torch
import yaml

from lightft.cli import main
from tests.conftest import ROOT, chat, write_jsonl

TINY = str(ROOT / "configs" / "debug" / "tiny.yaml")


def fit(run_dir, *extra):
    main(["fit", "--config", TINY, "--trainer.default_root_dir", str(run_dir), "--trainer.max_steps", "2", *extra])


def fails(capsys, *args):
    """Run the CLI expecting a user error; returns the single stderr line."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]
    assert last.startswith(("lightft: error:", "error:")), err
    return last


def fit_fails(capsys, tmp_path, *args):
    """`lightft fit` on the tiny config into a fresh run directory, expecting a user error."""
    return fails(capsys, "fit", "--config", TINY, "--trainer.default_root_dir", str(tmp_path / "run"), *args)


def test_fit_writes_one_self_contained_run_directory(tmp_path):
    fit(tmp_path / "run")
    run = tmp_path / "run"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["init_args"]["peft"]["class_path"] == "lightft.peft.LoRA"
    assert "tokenizer" not in config["data"]["init_args"]  # linked from model.init_args.model, never written twice
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list(run.glob("events.out.tfevents.*"))
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert all("lora_" in k for k in saved["state_dict"])


def test_logged_metrics_include_the_promised_ones(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fit(tmp_path / "run", "--trainer.val_check_interval", "2")
    events = EventAccumulator(str(tmp_path / "run"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("train/loss", "train/grad_norm", "train/tokens_per_sec", "train/peak_memory_gb", "val/loss"):
        assert tag in tags, tags
    assert any(t.startswith("lr-") for t in tags)


def test_validate_test_predict_on_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    fit(run)
    ckpt = str(run / "checkpoints" / "last.ckpt")
    common = ["--config", TINY, "--trainer.default_root_dir", str(run), "--ckpt_path", ckpt]
    main(["validate", *common])
    main(["test", *common, "--data.init_args.test", str(ROOT / "data/quickstart/val.jsonl")])
    main(
        [
            "predict",
            *common,
            "--data.init_args.predict",
            str(ROOT / "data/quickstart/val.jsonl"),
            "--model.init_args.generation.max_new_tokens",
            "4",
        ]
    )
    [predictions] = list((run / "predictions").glob("*.jsonl"))
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(rows) == 100 and {"index", "completion", "reference"} <= set(rows[0])


def test_print_config_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", TINY, "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    init = config["model"]["init_args"]
    assert init["optimizer"]["name"] == "adamw" and init["scheduler"]["warmup_ratio"] == 0.0
    assert init["peft"]["init_args"]["target_modules"] == "all-linear"
    assert config["data"]["init_args"]["truncation"] == "right"
    assert config["checkpoint"]["save_last"] is True


def test_stacked_configs_override_in_order(tmp_path, capsys):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(
        "model:\n  init_args:\n    peft:\n      class_path: lightft.peft.QLoRA\n      init_args:\n        r: 2\n"
    )
    with pytest.raises(SystemExit):
        main(["fit", "--config", TINY, "--config", str(overlay), "--print_config"])
    peft = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["peft"]
    assert peft["class_path"] == "lightft.peft.QLoRA" and peft["init_args"]["r"] == 2


def test_unknown_config_key_is_rejected(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args:\n    lora_rank: 8\n")
    line = fails(capsys, "fit", "--config", TINY, "--config", str(bad))
    assert "lora_rank" in capsys.readouterr().err or "lora_rank" in line


def test_run_directory_holding_another_run_is_refused_and_kept(tmp_path, capsys):
    run = tmp_path / "run"
    fit(run)
    before = (run / "config.yaml").read_bytes()
    line = fails(capsys, "fit", "--config", TINY, "--trainer.default_root_dir", str(run))
    assert "already holds a run" in line and "--ckpt_path" in line
    line = fails(
        capsys,
        "fit",
        "--config",
        TINY,
        "--trainer.default_root_dir",
        str(run),
        "--data.init_args.max_length",
        "64",
        "--ckpt_path",
        str(run / "checkpoints" / "last.ckpt"),
    )
    assert "different run (data differ)" in line
    assert (run / "config.yaml").read_bytes() == before
    # resuming the same run is fine, and so is replacing it when asked
    fit(run, "--trainer.max_steps", "3", "--ckpt_path", str(run / "checkpoints" / "last.ckpt"))
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    fit(run, "--overwrite", "true", "--model.init_args.peft.init_args.r", "2")


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        (None, "data file '.*missing.jsonl' not found"),
        ('{"messages": [{"role": "user", "content": "a"}]}\n{"messages": [\n', r"bad.jsonl:2: malformed JSON line"),
        ([{"prompt": "a", "completion": None}], r"bad.jsonl:1: field 'completion' is missing or null"),
        ([{"question": "a", "answer": "b"}], r"cannot tell the format .* set format:"),
        ([{"messages": [{"role": "user", "content": "only a question"}]}], "all 1 examples train on zero tokens"),
    ],
)
def test_bad_data_gives_one_line_errors(tmp_path, capsys, rows, expected):
    import re

    path = tmp_path / ("missing.jsonl" if rows is None else "bad.jsonl")
    if isinstance(rows, str):
        path.write_text(rows)
    elif rows is not None:
        write_jsonl(path, rows)
    line = fit_fails(
        capsys,
        tmp_path,
        "--data.init_args.train",
        str(path),
        "--data.init_args.val",
        "null",
    )
    assert re.search(expected, line), line
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_model_path_not_found(tmp_path, capsys):
    line = fit_fails(
        capsys,
        tmp_path,
        "--model.init_args.model.path",
        str(tmp_path / "no-model"),
    )
    assert "model.init_args.model.path" in line and "not found" in line


def test_target_modules_matching_nothing(tmp_path, capsys):
    line = fit_fails(
        capsys,
        tmp_path,
        "--model.init_args.peft.init_args.target_modules",
        "[query, value]",
    )
    assert "target_modules" in line and "q_proj" in line


def test_empty_dataset(tmp_path, capsys):
    path = write_jsonl(tmp_path / "d.jsonl", [chat("word " * 100, "yes")])
    line = fit_fails(
        capsys,
        tmp_path,
        "--data.init_args.train",
        str(path),
        "--data.init_args.val",
        "null",
        "--data.init_args.truncation",
        "drop",
    )
    assert "no example is left" in line


def test_config_file_errors_name_file_and_line(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("trainer:\n  max_steps: 3\n model:\n  x: [1,\n")
    assert fails(capsys, "fit", "--config", str(broken)).startswith(f"lightft: error: {broken}:3:2: invalid YAML")
    assert "--config: file" in fails(capsys, "fit", "--config", str(tmp_path / "nope.yaml"))


@pytest.mark.parametrize("args", [[], ["-h"], ["--help"]], ids=["nothing", "-h", "--help"])
def test_top_level_help_lists_every_command(capsys, args):
    from lightft.commands import COMMANDS

    main(args)  # returns: exit status 0
    out = capsys.readouterr().out
    assert out.startswith("usage: lightft <command>")
    for name in ("fit", "validate", "test", "predict", "estimate", "bench", "doctor", "export", "generate"):
        [line] = [line for line in out.splitlines() if line.startswith(f"  {name} ")]
        assert line.split(None, 1)[1] == COMMANDS[name] and len(COMMANDS[name]) > 20


def test_unknown_command_names_the_commands(capsys):
    line = fails(capsys, "estimat", "--config", TINY)
    assert "unknown command 'estimat'" in line and "estimate" in line and "generate" in line


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("estimate", ["--json", "--gpu_memory", "--devices", "--num_nodes"]),
        ("doctor", ["--examples"]),
        ("bench", ["--strategies", "--peft", "--gradient_checkpointing", "--optimizers", "--batch_sizes",
                   "--seq_lens", "--chunked_loss", "--activation_offloading", "--kernels", "--steps", "--out",
                   "--synthetic", "--timeout"]),
    ],
)  # fmt: skip
def test_command_help_shows_its_options_and_fit_keys_without_a_config(capsys, command, options):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: lightft {command} --config X.yaml")
    for option in options:
        assert f"\n  {option} " in out, option
    for key in ("--config CONFIG", "--trainer.max_steps", "--model CONFIG", "--data CONFIG", "--checkpoint.save_last"):
        assert key in out, key
    assert "default:" in out


def test_command_defaults_show_in_help(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # help wraps lines
    assert "(type: int, default: 3)" in text and "default: runs/bench)" in text and "default: 1800.0)" in text


@pytest.mark.parametrize("command", ["estimate", "bench", "doctor"])
def test_missing_config_is_a_one_line_error_naming_the_fix(capsys, command):
    line = fails(capsys, command)
    fix = f"lightft {command} --config configs/<method>/<recipe>.yaml"
    assert line == f"lightft: error: --config: give the run's config: {fix}"
    assert "--config: file" in fails(capsys, command, "--config", "nope.yaml")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--gpu_memory", "lots"], "gpu_memory: Not of type PositiveFloat"),
        (["--devices", "0"], "devices: Not of type PositiveInt"),
        (["--json", "maybe"], "json"),
        (["--model.init_args.no_such_key", "1"], "no_such_key"),
    ],
)
def test_bad_estimate_options_are_one_line_errors(capsys, args, expected):
    line = fails(capsys, "estimate", "--config", TINY, *args)
    assert expected in line and "NoneType" not in line, line


def test_estimate_options_anywhere_among_fit_arguments(capsys):
    main(["estimate", "--json", "--config", TINY, "--devices=2", "--trainer.max_steps", "2", "--num_nodes", "3"])
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{") :])["plan"]["world_size"] == 6
