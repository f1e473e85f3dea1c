"""Every PEFT strategy end to end through the CLI on the tiny config: fit, summary logged, export (which reloads
the export and checks the logits), merged export where defined, generation from the export."""

import json

import pytest
import torch

from lightft.cli import main
from tests.test_cli import TINY, fails

STRATEGIES = {
    "lora": [],
    "dora": ["--model.init_args.peft.init_args.dora", "true"],
    "qlora": ["--model.init_args.peft", "lightft.peft.QLoRA"],
    "qlora-dora": ["--model.init_args.peft", "lightft.peft.QLoRA", "--model.init_args.peft.init_args.dora", "true"],
    "lora8bit": ["--model.init_args.peft", "lightft.peft.LoRA8bit"],
    "ia3": ["--model.init_args.peft", "lightft.peft.IA3"],
    "prompt": ["--model.init_args.peft", "lightft.peft.PromptTuning",
               "--model.init_args.peft.init_args.num_virtual_tokens", "4"],
    "ptuning": ["--model.init_args.peft", "lightft.peft.PTuning",
                "--model.init_args.peft.init_args.num_virtual_tokens", "4"],
    "prefix": ["--model.init_args.peft", "lightft.peft.PrefixTuning",
               "--model.init_args.peft.init_args.num_virtual_tokens", "4"],
    "bottleneck": ["--model.init_args.peft", "lightft.peft.BottleneckAdapter"],
    "full": ["--model.init_args.peft", "lightft.peft.FullFineTune"],
}  # fmt: skip
MERGEABLE = {"lora", "dora", "qlora", "qlora-dora", "lora8bit", "ia3", "full"}


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_strategy_end_to_end(name, tmp_path, capsys, caplog):
    caplog.set_level("INFO")
    run = tmp_path / "run"
    main(["fit", "--config", TINY, "--trainer.default_root_dir", str(run), "--trainer.max_steps", "2",
          *STRATEGIES[name]])  # fmt: skip
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run))
    events.Reload()
    trainable = events.Scalars("peft/trainable_params")[0].value
    assert 0 < trainable <= events.Scalars("peft/total_params")[0].value
    assert events.Scalars("peft/adapter_mb")[0].value > 0
    assert any("trainable of" in r.getMessage() and "MB on disk" in r.getMessage() for r in caplog.records)

    ckpt = str(run / "checkpoints" / "last.ckpt")
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    assert sum(t.numel() for t in saved.values()) == trainable

    main(["export", "--ckpt", ckpt, "--out", str(tmp_path / "adapter")])
    main(["generate", "--model", str(tmp_path / "adapter"), "--prompt", "Log this order: two mochas.",
          "--max_new_tokens", "3", "--output", str(tmp_path / "gen.jsonl")])  # fmt: skip
    assert json.loads((tmp_path / "gen.jsonl").read_text())["prompt"]
    if name in MERGEABLE:
        main(["export", "--ckpt", ckpt, "--out", str(tmp_path / "merged"), "--merge", "true"])
        assert (tmp_path / "merged" / "model.safetensors").is_file()
    else:
        line = fails(capsys, "export", "--ckpt", ckpt, "--out", str(tmp_path / "merged"), "--merge", "true")
        assert "cannot be merged" in line
        assert not (tmp_path / "merged").exists()
