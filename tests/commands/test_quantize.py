"""`lightft quantize` end to end on a tiny LoRA checkpoint: the report, the saved model, the run's own validation
data, calibration, and one-line refusals that leave `--out` untouched.
"""

import json

import lightning.pytorch as pl
import pytest
import torch
import yaml

from lightft.callbacks import VerifiedCheckpoint
from lightft.cli import main
from lightft.commands.export import export
from lightft.commands.quantize import quantize
from lightft.peft import LoRA
from lightft.quantization import ptq
from tests.conftest import QUICKSTART, write_jsonl
from tests.modules.test_sft import datamodule, module, trainer

VAL = str(QUICKSTART / "val.jsonl")


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_spec):
    """A short LoRA run laid out like `lightft fit`'s: config.yaml naming the validation split, checkpoints/."""
    root = tmp_path_factory.mktemp("run")
    pl.seed_everything(0)
    ckpt = VerifiedCheckpoint(dirpath=root / "checkpoints", save_last=True)
    trainer(root, max_steps=3, callbacks=[ckpt], enable_checkpointing=True).fit(
        module(tiny_spec, peft=LoRA(r=4, dropout=0.0), lr=1e-2), datamodule(tiny_spec)
    )
    (root / "config.yaml").write_text(
        yaml.safe_dump({"data": {"init_args": {"val": {"path": VAL, "max_examples": 12}}}})
    )
    return root


def test_quantize_a_checkpoint_reports_and_saves_a_model_that_reloads(tmp_path, run, capsys):
    out = tmp_path / "int8"
    main(["quantize", "--ckpt", str(run / "checkpoints" / "last.ckpt"), "--out", str(out), "--scheme",
          "int8_weight_only", "--eval_examples", "8", "--prompts", "3", "--max_new_tokens", "8"])  # fmt: skip
    printed = capsys.readouterr().out
    report = json.loads((out / "quantization.json").read_text())
    assert report["scheme"] == "int8_weight_only/symmetric/per_channel" and report["stored_dtypes"] == ["int8"]
    assert report["size_mb"]["quantized"] < report["size_mb"]["float"]
    for side in ("float", "quantized"):  # the run's own validation split (its config.yaml), 8 examples
        assert report[side]["loss"] > 0 and report[side]["tokens"] > 0
    assert report["float"]["tokens"] == report["quantized"]["tokens"]
    assert abs(report["quantized"]["loss"] - report["float"]["loss"]) < 0.05
    assert report["prompts"] == 3 and 0 <= report["greedy_agreement"] <= 1
    assert "val loss" in printed and "greedy agreement" in printed
    model = ptq.load_quantized(out)
    assert set(ptq.stored_dtypes(model).values()) == {"int8"}
    assert not list(tmp_path.glob(".int8.partial-*"))  # the staging directory is gone


def test_quantize_an_export_with_calibrated_static_activations(tmp_path, run, capsys):
    export(str(run / "checkpoints" / "last.ckpt"), str(tmp_path / "adapter"))
    out = tmp_path / "static"
    report = quantize(str(out), model=str(tmp_path / "adapter"), scheme="int8_static", prompts=0, eval_examples=4,
                      calibration=__import__("lightft.quantization.observers", fromlist=["Calibration"]).Calibration(
                          observer="histogram", method="percentile", examples=4))  # fmt: skip
    assert report["scheme"].startswith("int8_static")
    assert report["quantized"]["loss"] == pytest.approx(report["float"]["loss"], abs=0.1)
    layer = ptq.load_quantized(out).model.layers[0].self_attn.q_proj
    assert layer.weight.act_quant_scale is not None and layer.weight.qdata.dtype == torch.int8
    # `lightft generate` loads the quantized directory too
    main(["generate", "--model", str(out), "--prompt", "Log this order: one latte", "--max_new_tokens", "4"])
    assert "--- completion" in capsys.readouterr().out


def test_a_base_model_without_data_gets_a_size_only_report(tmp_path, tiny_weights_dir):
    report = quantize(str(tmp_path / "q"), model=str(tiny_weights_dir), scheme="nf4")
    assert (
        report["float"]
        == report["quantized"]
        == {
            "loss": None,
            "perplexity": None,
            "tokens": 0,
            "exact_match": None,
            "tokens_per_second": None,
        }
    )
    assert report["size_mb"]["quantized"] < report["size_mb"]["float"] * 0.6  # embeddings and lm_head stay float


def _untouched(target):
    return sorted(p.name for p in target.iterdir()) == ["keep.txt"] and (target / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scheme", "int4_weight_only", "--group_size", "48"], "--group_size: 48 does not divide"),
        (["--scheme", "int8_static", "--data", "EMPTY"], "empty.jsonl: the file holds no records"),
        (["--scheme", "int8_static", "--calibration.observer", "kl"], "--calibration.observer: 'kl' is not one of"),
        (["--scheme", "int3"], "--scheme: 'int3' is not one of int8_weight_only"),
        (["--scheme", "int8_weight_only", "--model", "QUANTIZED"], "is already quantized"),
    ],
)
def test_bad_input_is_one_line_and_leaves_out_untouched(tmp_path, run, capsys, args, message):
    quantized = tmp_path / "quantized"
    if "QUANTIZED" in args:
        quantize(str(quantized), ckpt=str(run / "checkpoints" / "last.ckpt"), prompts=0, eval_examples=2)
        capsys.readouterr()  # its progress bars
        args = [a.replace("QUANTIZED", str(quantized)) for a in args]
    else:
        args = ["--ckpt", str(run / "checkpoints" / "last.ckpt"), *args]
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    args = [a.replace("EMPTY", str(empty)) for a in args]
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_:
        main(["quantize", *args, "--out", str(target), "--overwrite", "true", "--prompts", "0"])
    assert exit_.value.code != 0
    err = capsys.readouterr().err
    assert __import__("re").search(message, err) and len(err.strip().splitlines()) == 1, err
    assert _untouched(target)
    assert not list(tmp_path.glob(".out.partial-*"))


def test_a_non_empty_out_is_refused_without_overwrite(tmp_path, run, capsys):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit):
        main(["quantize", "--ckpt", str(run / "checkpoints" / "last.ckpt"), "--out", str(target)])
    assert "--out:" in capsys.readouterr().err and _untouched(target)


def test_a_run_whose_validation_split_is_preference_pairs_gets_a_size_only_report(tmp_path, run, capsys):
    import shutil

    pairs = next((QUICKSTART.parent / "preference").glob("*val*.jsonl"))
    copy = tmp_path / "dpo-run"
    shutil.copytree(run / "checkpoints", copy / "checkpoints")
    (copy / "config.yaml").write_text(yaml.safe_dump({"data": {"init_args": {"val": str(pairs)}}}))
    report = quantize(str(tmp_path / "q"), ckpt=str(copy / "checkpoints" / "last.ckpt"))
    assert "give --data FILE for validation loss" in capsys.readouterr().out
    assert report["float"]["loss"] is None and report["size_mb"]["quantized"] < report["size_mb"]["float"]
