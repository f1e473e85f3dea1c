"""Every dataset shape of tests/assets/shapes end to end through `lightft doctor` and `lightft fit` on the tiny model:
one SFT mixture of all the SFT shapes (ShareGPT with and without a roles mapping, tool calls, per-message marks, a
mapped QA set), a DPO mixture of the preference shapes (UltraFeedback-style, HH-RLHF transcripts), a reward model
on score margins; then the one-line refusals of bad mixtures through the CLI.
"""

import pytest
import torch
import yaml

from lightft.cli import main
from tests.conftest import ROOT

SHAPES = ROOT / "tests" / "assets" / "shapes"
DEBUG = ROOT / "configs" / "debug"
SFT_MIXTURE = [
    {"path": str(SHAPES / "sharegpt.jsonl"), "weight": 2.0},
    {"path": str(SHAPES / "sharegpt_roles.jsonl"), "roles": {"customer": "user", "barista": "assistant"},
     "weight": 1.0},
    {"path": str(SHAPES / "marked.jsonl"), "weight": 1.0},
    {"path": str(SHAPES / "triviaqa.jsonl"), "columns": {"instruction": "question", "output": "answer.value"},
     "weight": 1.0},
    {"path": str(SHAPES / "tools.jsonl"), "examples": 8},
]  # fmt: skip


def overlay(tmp_path, name: str, data: dict, model: dict | None = None) -> str:
    """A config overlay file (lists of sources are YAML lists, as users write them)."""
    trainer = {"max_steps": 2, "val_check_interval": 1, "default_root_dir": str(tmp_path / name)}  # no validation data
    config = {"data": {"init_args": {**data, "val": None}}, "trainer": trainer}
    if model:
        config["model"] = {"init_args": model}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def global_step(run) -> int:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")["global_step"]


@pytest.fixture(scope="module")
def sft_overlay(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shapes")
    tools = {"model": {"path": str(ROOT / "tests" / "assets" / "tiny-llama"), "random_init": True,
                       "chat_template": "chatml-tools"}}  # fmt: skip
    return tmp, overlay(tmp, "sft", {"train": SFT_MIXTURE, "max_length": 1024}, tools)


def test_doctor_reads_every_sft_shape_in_one_mixture(sft_overlay, capsys):
    _, config = sft_overlay
    main(["doctor", "--config", str(DEBUG / "tiny.yaml"), "--config", config])
    out = capsys.readouterr().out
    assert "lightft doctor: 0 error(s)" in out and "mixture of 5" in out
    assert "tools.jsonl 8 drawn from 12" in out


def test_fit_trains_on_every_sft_shape_in_one_mixture(sft_overlay, capsys):
    tmp, config = sft_overlay
    main(["fit", "--config", str(DEBUG / "tiny.yaml"), "--config", config])
    assert global_step(tmp / "sft") == 2
    saved = yaml.safe_load((tmp / "sft" / "config.yaml").read_text())["data"]["init_args"]["train"]
    assert [s["path"] for s in saved] == [s["path"] for s in SFT_MIXTURE]  # the resolved config keeps the mixture


def test_dpo_trains_on_a_mixture_of_preference_shapes(tmp_path):
    sources = [{"path": str(SHAPES / "ultrafeedback.jsonl"), "weight": 1.0},
               {"path": str(SHAPES / "hh_rlhf.jsonl"), "weight": 1.0}]  # fmt: skip
    main(["fit", "--config", str(DEBUG / "tiny_dpo.yaml"), "--config", overlay(tmp_path, "dpo", {"train": sources})])
    assert global_step(tmp_path / "dpo") == 2


def test_a_reward_model_trains_on_score_margins(tmp_path, capsys):
    data = {"train": {"path": str(SHAPES / "ultrafeedback.jsonl"), "margin": "scores"}}
    main(["fit", "--config", str(DEBUG / "tiny_rm.yaml"), "--config", overlay(tmp_path, "rm", data)])
    assert global_step(tmp_path / "rm") == 2


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ([{"path": str(SHAPES / "sharegpt.jsonl"), "weight": -1.0}], r"train\[0\].weight: -1.0 must be > 0"),
        ([{"path": str(SHAPES / "sharegpt_roles.jsonl")}], r"roles.jsonl:1: conversations\[0\] has role 'customer'"),
        ({"path": str(SHAPES / "sharegpt.jsonl"), "weight": 2.0}, r"data.init_args.train.weight: a weight is a share"),
    ],
)  # fmt: skip
def test_bad_mixtures_are_one_line_errors(tmp_path, capsys, train, message):
    import re

    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(DEBUG / "tiny.yaml"), "--config", overlay(tmp_path, "bad", {"train": train})])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("lightft: error: ") and re.search(message, err), err
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_the_triviaqa_recipe_reads_triviaqa_as_it_comes(capsys):
    """configs/sft/smollm2_triviaqa.yaml on SmolLM2 with its Hub splits pointed at the local sample of the same shape:
    the question is the user turn, `answer.value` the trained assistant turn.
    """  # noqa: D205
    sample = str(SHAPES / "triviaqa.jsonl")
    main(["doctor", "--config", str(ROOT / "configs" / "sft" / "smollm2_triviaqa.yaml"),
          "--data.init_args.train.path", sample, "--data.init_args.val.path", sample, "--examples", "1"])  # fmt: skip
    out = capsys.readouterr().out
    assert "lightft doctor: 0 error(s)" in out, out
    assert "Which store is on the harbor?" in out and "[[Harbor<|im_end|>" in out, out
