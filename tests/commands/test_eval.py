"""`lightft eval` end to end on tiny models: predictions and summary, side-by-side comparison, KL to a reference
computed independently, rewards, and one-line refusals.
"""

import json
import re
from pathlib import Path

import pytest
import torch

from lightft.cli import main
from lightft.commands.eval import evaluate
from lightft.evaluation import metrics
from lightft.models.loading import ModelSpec, load_model, load_tokenizer
from lightft.rl.rewards import JSONMatchReward
from tests.conftest import QUICKSTART, ROOT, TINY, write_jsonl

VAL = str(QUICKSTART / "val.jsonl")
QUICK = ["--limit", "4", "--max_new_tokens", "6", "--batch_size", "3"]


@pytest.fixture(scope="module")
def other_dir(tmp_path_factory):
    """A second tiny model (another random initialisation), saved like a hub directory."""
    out = tmp_path_factory.mktemp("other")
    spec = ModelSpec(str(TINY), random_init=True, seed=1)
    tokenizer = load_tokenizer(spec)
    load_model(spec, tokenizer).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_eval_writes_predictions_and_a_summary_that_is_their_mean(tmp_path, tiny_weights_dir, capsys):
    out = tmp_path / "eval"
    main(["eval", "--model", str(tiny_weights_dir), "--data", VAL, "--out", str(out), *QUICK,
          "--reward", "lightft.rl.rewards.JSONMatchReward"])  # fmt: skip
    printed = capsys.readouterr().out
    rows, summary = _rows(out / "predictions.jsonl"), json.loads((out / "summary.json").read_text())
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    reference = json.loads(Path(VAL).read_text().splitlines()[0])["messages"][1]["content"]
    assert rows[0]["reference"] == reference and rows[0]["prompt"].endswith("<|im_start|>assistant\n")
    model = summary["model"]
    assert model["examples"] == 4 and summary["data"] == VAL
    for name in ("exact_match", "rouge_l", "json_valid", "json_exact", "field_match", "reward"):
        assert model[name] == pytest.approx(sum(r[name] for r in rows) / 4), name
    for row in rows:  # each row's figures are its own completion's
        assert row == {**row, **metrics.per_example(row["completion"], row["reference"], with_json=True)}
        assert row["reward"] == JSONMatchReward()([], [row["completion"]], [row["reference"]])[0]
    assert model["loss"] > 0 and model["perplexity"] == pytest.approx(torch.tensor(model["loss"]).exp().item())
    assert re.search(r"exact_match\s+0\.0000", printed) and "perplexity" in printed


def test_compare_puts_two_models_side_by_side_and_kl_to_itself_is_zero(tmp_path, tiny_weights_dir, other_dir, capsys):
    summary = evaluate(str(tiny_weights_dir), VAL, out=str(tmp_path / "e"), compare=str(other_dir),
                       reference=str(tiny_weights_dir), limit=4, max_new_tokens=6, batch_size=3)  # fmt: skip
    assert summary["model"]["kl_to_reference"] == pytest.approx(0.0, abs=1e-6)
    assert summary["compare"]["kl_to_reference"] > 0.01
    assert summary["model"]["loss"] != summary["compare"]["loss"]
    header = capsys.readouterr().out.splitlines()
    assert any(re.fullmatch(r"\s+model\s+compare", line) for line in header)
    assert len(_rows(tmp_path / "e" / "compare_predictions.jsonl")) == 4


def test_kl_to_the_reference_equals_a_position_by_position_computation(tmp_path, tiny_weights_dir, other_dir):
    """Batched and padded (3 prompts of different lengths per batch) against one unpadded example at a time."""
    evaluate(str(other_dir), VAL, out=str(tmp_path / "e"), reference=str(tiny_weights_dir), limit=4,
             max_new_tokens=6, batch_size=3)  # fmt: skip
    tokenizer = load_tokenizer(ModelSpec(str(tiny_weights_dir)))
    policy = load_model(ModelSpec(str(other_dir)), tokenizer).eval()
    reference = load_model(ModelSpec(str(tiny_weights_dir)), tokenizer).eval()
    for row in _rows(tmp_path / "e" / "predictions.jsonl"):
        prompt = tokenizer(row["prompt"], add_special_tokens=False).input_ids
        answer = tokenizer(row["completion"], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        ids = torch.tensor([prompt + answer])
        with torch.no_grad():
            p = torch.log_softmax(policy(input_ids=ids).logits[0], -1)
            q = torch.log_softmax(reference(input_ids=ids).logits[0], -1)
        want = sum(
            float((p[t].exp() * (p[t] - q[t])).sum()) for t in range(len(prompt) - 1, len(prompt) + len(answer) - 1)
        )
        assert row["kl_to_reference"] == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_samples_score_the_sampled_policy_over_every_sample(tmp_path, tiny_weights_dir):
    """`--samples 3 --do_sample true`: three sampled answers per prompt, each scored; the summary is their mean."""
    tiny = str(tiny_weights_dir)
    summary = evaluate(tiny, VAL, out=str(tmp_path / "e"), reference=tiny, reward=JSONMatchReward(), limit=2,
                       max_new_tokens=6, do_sample=True, samples=3)["model"]  # fmt: skip
    rows = _rows(tmp_path / "e" / "predictions.jsonl")
    assert [(r["index"], r["sample"]) for r in rows] == [(i, k) for i in range(2) for k in range(3)]
    assert summary["examples"] == 2 and summary["samples"] == 3
    assert len({r["completion"] for r in rows}) > 1  # sampled, not one decode repeated (a random tiny model)
    for name in ("rouge_l", "field_match", "reward", "kl_to_reference"):
        assert summary[name] == pytest.approx(sum(r[name] for r in rows) / 6), name
    assert summary["kl_to_reference"] == pytest.approx(0.0, abs=1e-6)


def test_a_file_without_answers_gets_generation_only_figures(tmp_path, tiny_weights_dir):
    prompts = write_jsonl(
        tmp_path / "p.jsonl", [{"prompt": "Say hi.", "completion": ""}, {"prompt": "Count.", "completion": ""}]
    )
    summary = evaluate(str(tiny_weights_dir), str(prompts), max_new_tokens=4)["model"]
    assert summary["examples"] == 2 and "exact_match" not in summary and "loss" not in summary


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "NOANSWERS", "--metrics", "[exact_match]"], r"row 0 has no reference answer, but --metrics asks"),
        (["--max_prompt_length", "5"], r"val.jsonl' row 0: the prompt is \d+ tokens, over the generation budget"),
        (["--metrics", "[bleu4]"], r"--metrics"),
        (["--model", "MISSING.ckpt"], r"--model: checkpoint '.*missing.ckpt' not found"),
        (["--samples", "4"], r"--samples 4: give 1, or more than 1 together with --do_sample true"),
    ],
)
def test_bad_input_is_one_line_and_leaves_out_untouched(tmp_path, tiny_weights_dir, capsys, args, message):
    no_answers = write_jsonl(tmp_path / "na.jsonl", [{"prompt": "Say hi.", "completion": ""}])
    args = [a.replace("NOANSWERS", str(no_answers)).replace("MISSING", str(tmp_path / "missing")) for a in args]
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    base = ["--model", str(tiny_weights_dir), "--data", VAL]
    with pytest.raises(SystemExit) as exit_:
        main(["eval", *base, *args, "--out", str(target), "--overwrite", "true", "--limit", "2"])
    assert exit_.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()  # progress bars of the loading before it, then the error
    assert re.search(message, err[-1]) and err[-1].startswith("lightft: error: ") and "error" not in "".join(err[:-1])
    assert [p.name for p in target.iterdir()] == ["keep.txt"]


def test_a_non_empty_out_is_refused_without_overwrite(tmp_path, tiny_weights_dir, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit):
        main(["eval", "--model", str(tiny_weights_dir), "--data", VAL, "--out", str(tmp_path)])
    assert "--out: " in capsys.readouterr().err and (tmp_path / "keep.txt").read_text() == "mine"


def test_lm_eval_runs_a_local_harness_task_on_the_loaded_model(tiny_weights_dir):
    """The harness scores each choice by its log-likelihood after the question; recomputed here by hand."""
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install 'lightft[eval]')")
    task = ROOT / "tests" / "assets" / "lm_eval"
    summary = evaluate(str(tiny_weights_dir), VAL, limit=1, max_new_tokens=2, lm_eval_tasks=["lightft_orders"],
                       lm_eval_include=str(task))["model"]["lm_eval"]["lightft_orders"]  # fmt: skip
    tokenizer = load_tokenizer(ModelSpec(str(tiny_weights_dir)))
    model = load_model(ModelSpec(str(tiny_weights_dir)), tokenizer).eval()
    hits = []
    for doc in map(json.loads, (task / "orders.jsonl").read_text().splitlines()):
        text = f"Q: {doc['question']}\nA:"
        context = tokenizer(text).input_ids  # the tokenizer's own special tokens (the harness's default)
        scores = []
        for choice in doc["choices"]:  # as the harness splits a pair: the whole text encoded, the context's tokens cut
            answer = tokenizer(f"{text} {choice}").input_ids[len(context) :]  # target_delimiter " "
            with torch.no_grad():
                logps = torch.log_softmax(model(input_ids=torch.tensor([context + answer])).logits[0], -1)
            scores.append(sum(float(logps[len(context) - 1 + i, t]) for i, t in enumerate(answer)))
        hits.append(scores.index(max(scores)) == doc["answer"])
    assert summary["sample_len"] == 4 and summary["acc,none"] == pytest.approx(sum(hits) / 4)
