"""CLI smoke per method recipe (configs/debug/tiny_{rm,dpo,ppo,grpo}.yaml): fit, the promised metrics logged,
validate on the checkpoint, export, and the exported model loads in transformers."""

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightft.cli import main
from tests.conftest import ROOT

METRICS = {
    "rm": ["train/loss", "val/accuracy", "val/margin"],
    "dpo": ["train/loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
            "logps/chosen", "logps/rejected", "val/loss"],
    "ppo": ["env/reward_mean", "objective/kl", "objective/entropy", "policy/clipfrac", "critic/loss",
            "train/response_length"],
    "grpo": ["env/reward_mean", "objective/kl", "objective/entropy", "policy/clipfrac", "train/response_length"],
}  # fmt: skip


def fit(name, run, steps):
    config = str(ROOT / "configs" / "debug" / f"tiny_{name}.yaml")
    main(["fit", "--config", config, "--trainer.default_root_dir", str(run), "--trainer.max_steps", str(steps)])
    events = EventAccumulator(str(run))
    events.Reload()
    return config, set(events.Tags()["scalars"])


@pytest.mark.parametrize("name", list(METRICS))
def test_recipe_fits_logs_and_exports(name, tmp_path):
    run = tmp_path / "run"
    config, tags = fit(name, run, 4)
    assert set(METRICS[name]) <= tags, sorted(tags)
    ckpt = str(run / "checkpoints" / "last.ckpt")
    if name in ("rm", "dpo"):
        main(["validate", "--config", config, "--ckpt_path", ckpt, "--trainer.default_root_dir", str(tmp_path / "v")])
    main(["export", "--ckpt", ckpt, "--out", str(tmp_path / "adapter")])
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_exported_reward_model_scores_like_the_trained_module(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lightft.commands.export import load_trained

    run = tmp_path / "run"
    fit("rm", run, 4)
    ckpt = run / "checkpoints" / "last.ckpt"
    main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "merged"), "--merge", "true"])
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    module = load_trained(ckpt).eval()
    texts = ['{"item": "latte", "qty": 2}', "I cannot help with that."]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        theirs = exported(**batch).logits.squeeze(-1)
        ours = module.model(**batch).logits.squeeze(-1)
    assert theirs.shape == (2,)
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)
    assert not torch.equal(theirs[0], theirs[1])
