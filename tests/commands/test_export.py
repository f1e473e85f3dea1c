import json

import lightning.pytorch as pl
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from lightft.callbacks import VerifiedCheckpoint
from lightft.cli import main
from lightft.commands.export import export, load_trained
from lightft.errors import LightFTError
from lightft.models.loading import load_model
from lightft.peft import FullFineTune, LoRA, QLoRA
from tests.modules.test_sft import datamodule, module, trainer

PROBE = torch.tensor([[1, 5, 9, 33, 70, 100, 250, 400]])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_spec):
    """One short LoRA, QLoRA and full fine-tuning run each; their last checkpoints."""
    out = {}
    for name, peft in {
        "lora": LoRA(r=4, dropout=0.0),
        "qlora": QLoRA(r=4, dropout=0.0),
        "full": FullFineTune(),
    }.items():
        root = tmp_path_factory.mktemp(name)
        pl.seed_everything(0)
        ckpt = VerifiedCheckpoint(dirpath=root, save_last=True)
        trainer(root, max_steps=4, callbacks=[ckpt], enable_checkpointing=True).fit(
            module(tiny_spec, peft=peft, lr=1e-2), datamodule(tiny_spec)
        )
        out[name] = root / "last.ckpt"
    return out


def logits(model):
    with torch.no_grad():
        return model(input_ids=PROBE).logits


def test_adapter_export_loads_with_peft_and_gives_identical_logits(tmp_path, checkpoints, tiny_spec, tokenizer):
    export(str(checkpoints["lora"]), str(tmp_path / "adapter"))
    trained = logits(load_trained(checkpoints["lora"]).model)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size > 0
    reloaded = PeftModel.from_pretrained(load_model(tiny_spec, tokenizer), tmp_path / "adapter")
    torch.testing.assert_close(logits(reloaded), trained)
    assert not torch.allclose(logits(load_model(tiny_spec, tokenizer)), trained)  # training changed something


@pytest.mark.parametrize("name", ["lora", "qlora", "full"])
def test_merged_export_loads_with_transformers(tmp_path, checkpoints, name):
    export(str(checkpoints[name]), str(tmp_path / "merged"), merge=True)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    reference = load_trained(checkpoints[name], quantize=False).model
    torch.testing.assert_close(logits(merged), logits(reference), rtol=1e-4, atol=1e-4)
    metadata = json.loads((tmp_path / "merged" / "lightft.json").read_text())
    assert metadata["merged"] and metadata["base"]["random_init"]


def test_export_verification_reads_the_text_probe_and_refuses_a_model_that_moved(tmp_path, checkpoints):
    from lightft.commands.export import _probe, _text_ids, _verify

    export(str(checkpoints["lora"]), str(tmp_path / "merged"), merge=True)
    module = load_trained(checkpoints["lora"], quantize=False)
    ids = _text_ids(module.tokenizer)
    assert ids.shape[1] > 8 and ids.min() >= 0  # the chat-templated sentence, not arbitrary ids
    expected = _probe(module.model, ids)
    _verify(tmp_path / "merged", expected, ids, exact=True, device=torch.device("cpu"))
    moved = expected.clone()
    moved[0, -1, 0] += 1e-2 * float(expected.abs().max())  # one logit, by 1% of the largest: beyond rounding
    with pytest.raises(RuntimeError, match="reloads with different logits"):
        _verify(tmp_path / "merged", moved, ids, exact=True, device=torch.device("cpu"))


def test_export_refuses_a_non_empty_directory(tmp_path, checkpoints):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "mine.txt").write_text("precious")
    with pytest.raises(LightFTError, match="exists and is not empty"):
        export(str(checkpoints["lora"]), str(target))
    assert (target / "mine.txt").read_text() == "precious"


def test_export_and_generate_through_the_cli(tmp_path, checkpoints, capsys):
    main(["export", "--ckpt", str(checkpoints["lora"]), "--out", str(tmp_path / "a")])
    main(
        [
            "generate",
            "--model",
            str(tmp_path / "a"),
            "--prompt",
            "Log this order: Mei wants two lattes.",
            "--max_new_tokens",
            "5",
            "--output",
            str(tmp_path / "gen.jsonl"),
        ]
    )
    out = capsys.readouterr().out
    assert "exported adapter" in out and "--- completion" in out
    row = json.loads((tmp_path / "gen.jsonl").read_text())
    assert row["prompt"].endswith("<|im_start|>assistant\n")


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt", str(tmp_path / "none.ckpt"), "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lightft: error: --ckpt: checkpoint") and "\n" not in err


def test_an_unknown_checkpoint_directory_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt", str(tmp_path / "run" / "checkpoints"), "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "neither FSDP2 shards (.metadata) nor a DeepSpeed checkpoint (latest)" in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_a_bf16_true_run_exports_and_generates_in_bfloat16(tmp_path, tiny_spec, capsys):
    """`--dtype keep` writes what the run trained: bfloat16 weights for a `bf16-true` run (was float32)."""
    from safetensors import safe_open

    pl.seed_everything(0)
    ckpt = VerifiedCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, max_steps=2, precision="bf16-true", callbacks=[ckpt], enable_checkpointing=True).fit(
        module(tiny_spec, peft=LoRA(r=4, dropout=0.0), lr=1e-2), datamodule(tiny_spec)
    )
    last = tmp_path / "ckpt" / "last.ckpt"
    assert torch.load(last, weights_only=True)["lightft_precision"] == "bf16-true"
    assert load_trained(last).model.dtype == torch.bfloat16
    for merge, name in ((True, "model.safetensors"), (False, "adapter_model.safetensors")):
        out = tmp_path / f"export-{merge}"
        export(str(last), str(out), merge=merge, device="cpu")
        with safe_open(out / name, "pt") as weights:
            assert {weights.get_slice(k).get_dtype() for k in weights.keys()} == {"BF16"}, name  # noqa: SIM118
    main(["generate", "--model", str(tmp_path / "export-True"), "--prompt", "Mei wants two lattes.",
          "--max_new_tokens", "3", "--dtype", "bfloat16", "--device", "cpu"])  # fmt: skip
    assert "--- completion" in capsys.readouterr().out
