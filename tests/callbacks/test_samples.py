"""SampleGenerations: K fixed validation prompts decoded at the steps it says, in `samples.jsonl` and TensorBoard;
a reward model's scores of K pairs; PPO's rollouts with their rewards; `lightft fit --samples.*`, resume appends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import FSDPStrategy

from lightft import PPOModule, PromptDataModule, SFTDataModule
from lightft.callbacks import SampleGenerations
from lightft.callbacks.samples import FILENAME, _unsupported, fixed_items, markdown_table, prompt_item
from lightft.cli import main
from lightft.commands.fit import _clear_run
from lightft.data.collate import PairCollator, PromptCollator
from lightft.data.pipeline import encode_prompts
from lightft.data.sources import DatasetSpec
from lightft.errors import LightFTError
from lightft.generation import GenerationSettings, generate
from lightft.modules.ppo import PPOSettings
from lightft.optim import OptimizerConfig, SchedulerConfig
from lightft.peft import LoRA
from lightft.rl.rewards import KeywordReward
from tests.conftest import QUICKSTART, ROOT, cpu_trainer
from tests.helpers.preference import GOOD, pair_data
from tests.modules.test_reward import reward_module
from tests.modules.test_sft import module as sft_module

VAL = DatasetSpec(str(QUICKSTART / "val.jsonl"), max_examples=8)


def sft_data(spec) -> SFTDataModule:
    train = DatasetSpec(str(QUICKSTART / "train.jsonl"), max_examples=32)
    return SFTDataModule(train=train, val=VAL, tokenizer=spec, max_length=128, batch_size=4)


def records(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / FILENAME).read_text(encoding="utf-8").splitlines()]


def text_steps(root: Path, tag: str) -> list[int]:
    """Steps at which TensorBoard holds the text summary `tag`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(root), size_guidance={"tensors": 0})
    events.Reload()
    name = f"{tag}/text_summary"
    return [event.step for event in events.Tensors(name)] if name in events.Tags()["tensors"] else []


def fit_sft(tmp_path, tiny_spec, callback, logger=False, peft=None, **trainer_kwargs):
    module = sft_module(tiny_spec, peft=peft or LoRA(r=4, dropout=0.0))
    trainer = cpu_trainer(tmp_path, callbacks=[callback], logger=logger, **trainer_kwargs)
    trainer.fit(module, sft_data(tiny_spec))
    return module


def test_every_n_steps_writes_k_records_at_exactly_those_steps(tmp_path, tiny_spec, tokenizer):
    callback = SampleGenerations(every_n_steps=2, prompts=3, max_new_tokens=6)
    logger = TensorBoardLogger(tmp_path, name="", version="")
    module = fit_sft(tmp_path, tiny_spec, callback, logger=logger, max_steps=4, limit_val_batches=0)
    rows = records(tmp_path)
    assert [(r["step"], r["index"]) for r in rows] == [(2, 0), (2, 1), (2, 2), (4, 0), (4, 1), (4, 2)]
    assert {r["kind"] for r in rows} == {"sample"} and {r["epoch"] for r in rows} == {0}
    # the prompts are the first validation examples as `lightft predict` encodes them
    prompts = encode_prompts(VAL, "val", tokenizer, 128)
    for row in rows:
        assert row["prompt"] == tokenizer.decode(prompts[row["index"]]["prompt_ids"])
        assert row["reference"] == prompts[row["index"]]["reference"]
    # the last step's completions are the trained model's greedy ones (weights do not change after the last step)
    batch = PromptCollator(tokenizer.pad_token_id)([{**prompts[i], "index": i} for i in range(3)])
    texts = generate(module.model.eval(), tokenizer, batch.input_ids, batch.attention_mask, GenerationSettings(6))
    assert [r["completion"] for r in rows[3:]] == texts
    assert text_steps(tmp_path, "samples") == [2, 4]


def test_every_n_steps_counts_optimizer_steps_not_micro_batches(tmp_path, tiny_spec):
    callback = SampleGenerations(every_n_steps=2, prompts=1, max_new_tokens=2)
    fit_sft(tmp_path, tiny_spec, callback, max_steps=5, accumulate_grad_batches=2, limit_val_batches=0)
    assert [r["step"] for r in records(tmp_path)] == [2, 4]


def test_at_each_validation_of_the_fit_not_the_sanity_check(tmp_path, tiny_spec):
    callback = SampleGenerations(prompts=2, max_new_tokens=4)  # every_n_steps None: after each validation
    logger = TensorBoardLogger(tmp_path, name="", version="")
    fit_sft(tmp_path, tiny_spec, callback, logger=logger, max_steps=4, val_check_interval=2, limit_val_batches=1)
    assert [(r["step"], r["index"]) for r in records(tmp_path)] == [(2, 0), (2, 1), (4, 0), (4, 1)]
    assert text_steps(tmp_path, "samples") == [2, 4]
    cpu_trainer(tmp_path, callbacks=[callback]).validate(sft_module(tiny_spec), sft_data(tiny_spec))
    assert len(records(tmp_path)) == 4  # `lightft validate` writes no samples


def test_prompts_zero_writes_nothing(tmp_path, tiny_spec):
    logger = TensorBoardLogger(tmp_path, name="", version="")
    callback = SampleGenerations(every_n_steps=1, prompts=0)
    fit_sft(tmp_path, tiny_spec, callback, logger=logger, max_steps=2, val_check_interval=1, limit_val_batches=1)
    assert not (tmp_path / FILENAME).exists()
    assert text_steps(tmp_path, "samples") == []


def test_sampling_leaves_the_training_trajectory_unchanged(tmp_path, tiny_spec):
    """Greedy decoding draws no random numbers and every module's train/eval mode is put back (LoRA dropout on)."""
    weights = []
    for callbacks in ([], [SampleGenerations(every_n_steps=1, prompts=2, max_new_tokens=4)]):
        torch.manual_seed(0)
        module = sft_module(tiny_spec, peft=LoRA(r=4, dropout=0.3))
        cpu_trainer(tmp_path, callbacks=callbacks, max_steps=3, limit_val_batches=0).fit(module, sft_data(tiny_spec))
        weights.append({k: v.clone() for k, v in module.state_dict().items() if "lora_" in k})
    assert len(records(tmp_path)) == 6
    for name, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][name], tensor, rtol=0, atol=0, msg=name)


def test_a_fresh_fit_starts_a_new_file(tmp_path, tiny_spec):
    (tmp_path / FILENAME).write_text('{"step": 99}\n')
    callback = SampleGenerations(every_n_steps=1, prompts=1, max_new_tokens=2)
    fit_sft(tmp_path, tiny_spec, callback, max_steps=1, limit_val_batches=0)
    assert [r["step"] for r in records(tmp_path)] == [1]


def test_reward_model_logs_its_scores_of_k_validation_pairs(tmp_path, tiny_spec):
    module, data = reward_module(tiny_spec), pair_data(tmp_path, tiny_spec, n_train=16, n_val=8)
    logger = TensorBoardLogger(tmp_path, name="", version="")
    callback = SampleGenerations(every_n_steps=1, prompts=2)
    cpu_trainer(tmp_path, callbacks=[callback], logger=logger, max_steps=2, limit_val_batches=0).fit(module, data)
    rows = records(tmp_path)
    assert [(r["step"], r["index"], r["kind"]) for r in rows] == [(s, i, "score") for s in (1, 2) for i in (0, 1)]
    # the last step's scores are the trained model's scores of the first two validation pairs
    batch = PairCollator(module.tokenizer.pad_token_id)(fixed_items(data, 2))
    with torch.no_grad():
        chosen, rejected = module.eval()(batch).chunk(2)
    last = rows[2:]
    assert [r["chosen_score"] for r in last] == pytest.approx(chosen.tolist(), abs=1e-5)
    assert [r["rejected_score"] for r in last] == pytest.approx(rejected.tolist(), abs=1e-5)
    assert all(r["margin"] == pytest.approx(r["chosen_score"] - r["rejected_score"]) for r in rows)
    assert all(r["chosen"].split()[0] in GOOD and "Question" in r["prompt"] for r in rows)
    assert text_steps(tmp_path, "samples") == [1, 2]


def test_ppo_logs_rollouts_with_their_rewards(tmp_path, tiny_spec):
    reward = KeywordReward("e")
    module = PPOModule(
        tiny_spec,
        reward=reward,
        peft=LoRA(r=4, dropout=0.0),
        optimizer=OptimizerConfig(lr=1e-3),
        scheduler=SchedulerConfig(name="constant"),
        gradient_checkpointing=False,
        generation=GenerationSettings(max_new_tokens=8, do_sample=True),
        ppo=PPOSettings(epochs=1, mini_batch_size=4),
    )
    train = DatasetSpec(str(QUICKSTART / "train.jsonl"), max_examples=16)
    data = PromptDataModule(train=train, tokenizer=tiny_spec, max_prompt_length=48, batch_size=4)
    logger = TensorBoardLogger(tmp_path, name="", version="")
    callback = SampleGenerations(every_n_steps=1, prompts=2, max_new_tokens=4, rollouts=3)
    cpu_trainer(tmp_path, callbacks=[callback], logger=logger, max_steps=2, limit_val_batches=0).fit(module, data)
    rows = records(tmp_path)
    # no validation data: the fixed prompts are the first training prompts
    assert [(r["step"], r["kind"], r["index"]) for r in rows] == [
        (s, kind, i) for s in (1, 2) for kind, n in (("sample", 2), ("rollout", 3)) for i in range(n)
    ]
    rollouts = [r for r in rows if r["kind"] == "rollout"]
    expected = reward([r["prompt"] for r in rollouts], [r["completion"] for r in rollouts], [])
    assert [r["reward"] for r in rollouts] == pytest.approx(expected)
    assert module.latest_rollout is not None and rollouts[-3:] == [
        {"step": 2, "epoch": 0, "kind": "rollout", "index": i, **record}
        for i, record in enumerate(module.rollout_records(3))
    ]
    assert text_steps(tmp_path, "rollouts") == [1, 2] and text_steps(tmp_path, "samples") == [1, 2]


def test_cli_options_and_a_resumed_run_appends(tmp_path):
    run = tmp_path / "run"
    common = ["--config", str(ROOT / "configs" / "debug" / "tiny.yaml"), "--trainer.default_root_dir", str(run)]
    options = ["--samples.every_n_steps", "2", "--samples.prompts", "3", "--samples.max_new_tokens", "4"]
    main(["fit", *common, *options, "--trainer.max_steps", "2"])
    ckpt = str(run / "checkpoints" / "last.ckpt")
    main(["fit", *common, *options, "--trainer.max_steps", "4", "--ckpt_path", ckpt])
    assert [(r["step"], r["index"]) for r in records(run)] == [(s, i) for s in (2, 4) for i in range(3)]
    assert text_steps(run, "samples") == [2, 4]


def test_overwrite_clears_the_samples_file(tmp_path):
    (tmp_path / FILENAME).write_text("{}\n")
    (tmp_path / "notes.txt").write_text("mine")
    _clear_run(tmp_path)
    assert not (tmp_path / FILENAME).exists() and (tmp_path / "notes.txt").exists()


def test_multi_turn_prompt_stops_before_the_first_answer(tokenizer):
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "one"},
                {"role": "user", "content": "b"}, {"role": "assistant", "content": "two"}]  # fmt: skip
    from lightft.data.formats import Example
    from lightft.data.templates import ExampleEncoder

    encoded = ExampleEncoder(tokenizer, 256).encode(Example(messages, trained_turns=[1, 3]))
    item = prompt_item({"input_ids": encoded.input_ids, "labels": encoded.labels, "index": 0}, tokenizer)
    assert tokenizer.decode(item["prompt_ids"]).endswith("assistant\n") and item["reference"] == "one"


@pytest.mark.parametrize("kwargs", [dict(every_n_steps=0), dict(prompts=-1), dict(max_new_tokens=0)])
def test_bad_settings_are_one_line_errors(kwargs):
    with pytest.raises(LightFTError, match="samples"):
        SampleGenerations(**kwargs)


def test_sharded_outside_the_step_is_refused_with_a_reason():
    assert _unsupported(FSDPStrategy()) == "FSDP (v1)"


def test_markdown_table_keeps_one_row_per_record():
    table = markdown_table([{"step": 1, "index": 0, "prompt": "a|b\nc", "margin": 0.123456}])
    assert table.splitlines() == ["| index | prompt | margin |", "|---|---|---|", "| 0 | a\\|b<br>c | 0.1235 |"]


@pytest.mark.slow
def test_two_fsdp2_ranks_sample_together_and_rank_zero_writes_once(tmp_path):
    """Every rank decodes the same prompts (a sharded forward is collective; FSDP2 gathers once), no rank hangs, and
    the file holds each record once."""
    import subprocess
    import sys

    run = tmp_path / "run"
    command = [
        sys.executable, "-m", "lightft.cli", "fit", "--config", "configs/debug/tiny.yaml",
        "--config", "configs/trainer/cpu2.yaml", "--config", "configs/trainer/fsdp2.yaml",
        "--trainer.default_root_dir", str(run), "--trainer.max_steps", "2", "--data.init_args.batch_size", "2",
        "--samples.every_n_steps", "1", "--samples.max_new_tokens", "8",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    rows = records(run)
    assert [(r["step"], r["index"]) for r in rows] == [(s, i) for s in (1, 2) for i in (0, 1)]
    assert rows[0]["prompt"] == rows[2]["prompt"] and rows[0]["completion"]
