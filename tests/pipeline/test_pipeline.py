"""`lightft pipeline` on tiny models: every stage kind runs, a rerun skips finished stages, a killed stage resumes
from its last checkpoint, and bad pipelines are refused in one line before anything runs.
"""

import json
import re
import shutil

import pytest
import torch
import yaml

from lightft.cli import main
from lightft.commands.fit import LightFTCLI
from lightft.pipeline import load, run
from lightft.pipeline.runner import fit_arguments
from tests.conftest import ROOT

TINY_PIPELINE = ROOT / "configs" / "debug" / "tiny_pipeline.yaml"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The tiny pipeline (sft, pairs, rm, ppo, dpo, orpo, pairs2, dpo2, final eval) run once: (root, records, log)."""
    root = tmp_path_factory.mktemp("pipeline") / "run"
    records = run(load(TINY_PIPELINE, str(root)))
    return root, {r["name"]: r for r in records}


def test_every_stage_runs_and_the_table_holds_each(finished):
    root, records = finished
    assert list(records) == ["sft", "pairs", "rm", "ppo", "dpo", "orpo", "pairs2", "dpo2", "final"]
    for name in ("sft", "rm", "ppo", "dpo", "orpo", "dpo2"):
        assert (root / name / "export" / "lightft.json").is_file(), name
        assert records[name]["output"] == str(root / name / "export")
    assert json.loads((root / "rm" / "export" / "lightft.json").read_text())["head"] == "reward"
    assert records["sft"]["eval"]["kl_to_reference"] == 0.0  # the reference stage itself
    for name in ("ppo", "dpo", "orpo", "dpo2"):  # trained away from the SFT model: KL > 0, and each figure present
        figures = records[name]["eval"]
        assert figures["kl_to_reference"] > 0 and {"reward", "reward_model", "field_match", "loss"} <= set(figures)
    for key in ("reward", "reward_model", "field_match", "loss", "kl_to_reference"):  # the same model, greedy
        assert records["final"]["eval"][key] == pytest.approx(records["dpo2"]["eval"][key]), key
    for key in ("reward", "reward_model", "field_match", "kl_to_reference"):  # and sampled with the same seed
        assert records["final"]["eval"][f"sampled/{key}"] == pytest.approx(records["dpo2"]["eval"][f"sampled/{key}"])
    assert (
        records["sft"]["eval"]["sampled/kl_to_reference"] == 0.0
        and records["ppo"]["eval"]["sampled/kl_to_reference"] > 0
    )
    sampled = [
        json.loads(line) for line in (root / "ppo" / "eval" / "sampled_predictions.jsonl").read_text().splitlines()
    ]
    assert [(r["index"], r["sample"]) for r in sampled] == [(i, k) for i in range(4) for k in range(2)]
    assert records["ppo"]["eval"]["sampled/reward"] == pytest.approx(sum(r["reward"] for r in sampled) / 8)
    table = (root / "results.md").read_text()
    assert [line.split()[0] for line in table.splitlines()[1:]] == list(records)
    assert "sampled/reward" in table.splitlines()[0]
    assert "held-out pair accuracy" in table and re.search(r"pairs\s+generate_pairs.*\d+ pairs / 24 prompts", table)
    assert json.loads((root / "results.json").read_text())[0]["name"] == "sft"


def test_stages_take_their_inputs_from_earlier_stages(finished):
    root, _ = finished
    rm = yaml.safe_load((root / "rm" / "config.yaml").read_text())
    assert rm["model"]["init_args"]["model"]["path"] == str(root / "sft" / "export")
    assert rm["data"]["init_args"]["train"] == str(root / "pairs" / "pairs.jsonl")
    ppo = yaml.safe_load((root / "ppo" / "config.yaml").read_text())["model"]["init_args"]
    assert ppo["reward"] == {
        "class_path": "lightft.rl.rewards.RewardModelScorer",
        "init_args": {"path": str(root / "rm" / "export"), "batch_size": 8, "max_length": 1024},
    }
    assert ppo["model"]["path"] == str(root / "sft" / "export") and ppo["model"]["random_init"] is False
    dpo2 = yaml.safe_load((root / "dpo2" / "config.yaml").read_text())  # iterative DPO: round 2 starts from round 1
    assert dpo2["model"]["init_args"]["model"]["path"] == str(root / "dpo" / "export")
    assert dpo2["data"]["init_args"]["train"] == str(root / "pairs2" / "pairs.jsonl")


def test_generated_pairs_prefer_the_higher_reward(finished):
    root, records = finished
    for name in ("pairs", "pairs2"):
        rows = [json.loads(line) for line in (root / name / "pairs.jsonl").read_text().splitlines()]
        assert len(rows) == records[name]["pairs"]["pairs"] > 0
        assert all(r["score_chosen"] > r["score_rejected"] for r in rows)
    rows = [json.loads(line) for line in (root / "pairs" / "pairs.jsonl").read_text().splitlines()]
    for row in rows:  # the rule reward of `pairs`: density of the letter e
        for side in ("chosen", "rejected"):
            text = row[side][0]["content"]
            assert row[f"score_{side}"] == pytest.approx(text.count("e") / max(1, len(text)), abs=1e-6)


def test_a_rerun_skips_finished_stages(finished, capsys):
    root, records = finished
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and p.parent.name != root.name}
    again = run(load(TINY_PIPELINE, str(root)))
    printed = capsys.readouterr().out
    assert printed.count("skipped") == len(records)
    assert [r["seconds"] for r in again] == [r["seconds"] for r in records.values()]
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}


def test_a_changed_finished_stage_is_refused_before_anything_runs(finished, tmp_path, capsys):
    root, _ = finished
    config = yaml.safe_load(TINY_PIPELINE.read_text())
    config["stages"][4]["set"]["trainer.max_steps"] = 3  # dpo
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    before = (root / "results.json").read_text()
    with pytest.raises(SystemExit):
        main(["pipeline", "--config", str(changed), "--root", str(root)])
    err = capsys.readouterr().err.strip()
    assert err == (f"lightft: error: {changed}: stage 'dpo' finished with another definition (its config or keys "
                   f"changed); delete {root / 'dpo'} to rerun it.")  # fmt: skip
    assert (root / "results.json").read_text() == before


def test_a_killed_stage_resumes_from_its_last_checkpoint(tmp_path, capsys):
    config = {"root": str(tmp_path / "run"), "stages": [
        {"name": "sft", "kind": "sft", "config": "configs/debug/tiny.yaml",
         "set": {"trainer.max_steps": 4, "trainer.val_check_interval": 2}}]}  # fmt: skip
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(config))
    pipeline = load(path)
    words = fit_arguments(pipeline, pipeline.stages[0], {})
    LightFTCLI(args=[*words, "--trainer.max_steps", "2"])  # the stage's own fit, killed after step 2
    last = tmp_path / "run" / "sft" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 2
    capsys.readouterr()
    run(pipeline)
    assert f"sft: resuming from {last}" in capsys.readouterr().out
    assert torch.load(last, weights_only=False)["global_step"] == 4
    assert (tmp_path / "run" / "sft" / "stage.json").is_file()


def _pipeline(tmp_path, stages, **extra):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"root": str(tmp_path / "run"), "stages": stages, **extra}))
    return path


SFT = {"name": "sft", "kind": "sft", "config": "configs/debug/tiny.yaml"}


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        (
            [
                SFT,
                {
                    "name": "dpo",
                    "kind": "dpo",
                    "config": "configs/debug/tiny_dpo.yaml",
                    "model": "${sft}",
                    "train": "${pairs}",
                },
            ],
            r"stage 'dpo'.train: '\$\{pairs\}' names no earlier stage \(earlier: sft\); name a stage above this one.",
        ),
        (
            [{**SFT, "kind": "dpo"}],
            r"stage 'sft'.config: 'configs/debug/tiny.yaml' trains lightft.SFTModule, not a dpo",
        ),
        ([{**SFT, "kind": "orpo", "config": "configs/debug/tiny_dpo.yaml"}], r"a orpo stage needs an ORPOLoss"),
        ([{**SFT, "kind": "rlhf"}], r"stages\[0\] \(sft\).kind: 'rlhf' is not one of sft, reward_model"),
        ([{**SFT, "lr": 1}], r"stages\[0\]: unknown key 'lr'"),
        ([SFT, SFT], r"stage 'sft': the name is used twice"),
        (
            [
                SFT,
                {"name": "pairs", "kind": "generate_pairs", "model": "${sft}", "prompts": "data/quickstart/val.jsonl"},
            ],
            r"generate_pairs ranks with exactly one of `reward`",
        ),
        ([{**SFT, "train": "missing.jsonl"}], r"stage 'sft'.train: 'missing.jsonl' not found"),
    ],
)
def test_bad_pipelines_are_one_line_before_anything_runs(tmp_path, capsys, stages, message):
    path = _pipeline(tmp_path, stages)
    with pytest.raises(SystemExit) as exit_:
        main(["pipeline", "--config", str(path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert re.search(message, err) and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_yaml_braces_around_a_stage_reference_get_a_hint(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("stages:\n  - {name: rm, kind: reward_model, model: ${sft}}\n")
    with pytest.raises(SystemExit):
        main(["pipeline", "--config", str(path)])
    assert re.fullmatch(r'lightft: error: .*bad.yaml: line 2 is not valid YAML \(.*\); inside \{...\} write '
                        r'"\$\{stage\}" in quotes.', capsys.readouterr().err.strip())  # fmt: skip


def test_a_reward_model_with_another_tokenizer_is_refused_before_ppo_trains(tmp_path, tiny_weights_dir, capsys):
    other = tmp_path / "rm"
    shutil.copytree(tiny_weights_dir, other)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.add_tokens(["<extra_token>"])
    tokenizer.save_pretrained(other)
    stages = [{"name": "ppo", "kind": "ppo", "config": "configs/debug/tiny_ppo.yaml", "model": str(tiny_weights_dir),
               "reward_model": str(other)}]  # fmt: skip
    with pytest.raises(SystemExit):
        main(["pipeline", "--config", str(_pipeline(tmp_path, stages))])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(r"stage 'ppo'.reward_model: '.*rm' has a different tokenizer \(\d+ tokens\) from the policy", err)
    assert not (tmp_path / "run" / "ppo" / "checkpoints").exists()


def test_the_curves_script_draws_the_ppo_and_dpo_stages(finished, tmp_path, capsys):
    import runpy

    curves = runpy.run_path(str(ROOT / "benchmarks" / "rlhf_curves.py"))
    root, _ = finished
    curves["main"](str(root), str(tmp_path / "curves.png"))
    printed = capsys.readouterr().out
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert re.search(r"ppo env/reward_mean: [-\d.]+ \(step \d+\) -> [-\d.]+", printed)
    assert "dpo2 rewards/accuracies" in printed and "orpo" not in printed  # kinds ppo and dpo only
