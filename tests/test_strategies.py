"""Strategy presets build the expected Lightning / DeepSpeed configuration; trainer overlays compose with recipes;
the compatibility matrix refuses impossible combinations at config time, and docs/compatibility.md is current."""

import json
import re

import pytest
import yaml
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

from lightft import peft
from lightft.cli import LightFTCLI
from lightft.compat import compatibility_markdown, strategy_conflict
from lightft.errors import LightFTError
from lightft.strategies import (
    DDP,
    FSDP,
    FSDP2,
    DeepSpeed,
    decoder_layer_classes,
    decoder_layers,
    fsdp_wrap_policy,
    strategy_kind,
    zero_stage,
)
from tests.conftest import ROOT
from tests.test_cli import fit_fails

OVERLAYS = sorted((ROOT / "configs" / "trainer").glob("*.yaml"))


def test_decoder_layers_of_the_tiny_llama(tiny_model):
    assert {c.__name__ for c in decoder_layer_classes(tiny_model)} == {"LlamaDecoderLayer"}
    assert len(decoder_layers(tiny_model)) == 2


def test_fsdp_wraps_decoder_layers_and_trainable_leaves(tiny_model):
    model = peft.LoRA(r=2, alpha=4).apply(tiny_model)
    classes = tuple(decoder_layer_classes(model))
    wrapped = [n for n, m in model.named_modules() if fsdp_wrap_policy(m, False, 0, layer_classes=classes)]
    layers = [n for n in wrapped if n.endswith(("layers.0", "layers.1"))]
    lora = [n for n in wrapped if ".lora_A." in n or ".lora_B." in n]
    assert len(layers) == 2 and lora and set(wrapped) == set(layers) | set(lora)
    assert fsdp_wrap_policy(model, True, 0, layer_classes=classes)  # always recurse


def test_ddp_preset():
    strategy = DDP(static_graph=True, timeout_minutes=5)
    assert isinstance(strategy, DDPStrategy) and strategy_kind(strategy) == "ddp"
    assert strategy._ddp_kwargs == {
        "find_unused_parameters": False, "static_graph": True, "gradient_as_bucket_view": True,
    }  # fmt: skip
    assert strategy._timeout.total_seconds() == 300


def test_fsdp_preset():
    strategy = FSDP(sharding="HYBRID_SHARD", cpu_offload=True, state_dict_type="sharded")
    assert isinstance(strategy, FSDPStrategy) and strategy_kind(strategy) == "fsdp"
    assert strategy.sharding_strategy.name == "HYBRID_SHARD" and strategy.cpu_offload.offload_params
    assert strategy._state_dict_type == "sharded" and strategy.kwargs["use_orig_params"]


def test_fsdp2_preset():
    strategy = FSDP2(reshard_after_forward=False, param_dtype="bfloat16")
    assert isinstance(strategy, ModelParallelStrategy) and strategy_kind(strategy) == "fsdp2"
    assert not strategy._save_distributed_checkpoint  # one gathered file of trainable weights by default


@pytest.mark.parametrize(
    ("stage", "offload_optimizer", "offload_parameters"), [(1, False, False), (2, True, False), (3, True, True)]
)
def test_deepspeed_config_per_stage(stage, offload_optimizer, offload_parameters):
    strategy = DeepSpeed(stage, offload_optimizer, offload_parameters, pin_memory=True)
    zero = strategy.config["zero_optimization"]
    assert zero["stage"] == zero_stage(strategy) == stage
    assert ("offload_optimizer" in zero) == offload_optimizer and ("offload_param" in zero) == offload_parameters
    if offload_optimizer:
        assert zero["offload_optimizer"]["device"] == "cpu" and zero["offload_optimizer"]["pin_memory"] is True
    assert zero.get("stage3_gather_16bit_weights_on_model_save", False) == (stage == 3)


def test_deepspeed_preset_merges_a_raw_json(tmp_path):
    raw = tmp_path / "ds.json"
    raw.write_text(json.dumps({"zero_optimization": {"reduce_bucket_size": 5}, "wall_clock_breakdown": True}))
    strategy = DeepSpeed(stage=3, offload_optimizer=True, config=str(raw))
    assert isinstance(strategy, DeepSpeedStrategy) and strategy_kind(strategy) == "deepspeed"
    zero = strategy.config["zero_optimization"]
    assert zero["stage"] == 3 and zero["reduce_bucket_size"] == 5 and zero["offload_optimizer"]["device"] == "cpu"
    assert zero_stage(DeepSpeed(stage=2, config={"zero_optimization": {"stage": 3}})) == 3
    assert strategy.config["wall_clock_breakdown"] is True and strategy.exclude_frozen_parameters


def test_deepspeed_preset_errors(tmp_path):
    with pytest.raises(LightFTError, match="offload_parameters: needs stage: 3"):
        DeepSpeed(stage=2, offload_parameters=True)
    with pytest.raises(LightFTError, match="no DeepSpeed JSON at"):
        DeepSpeed(config=str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"zero_optimization": {\n  "stage": 3,,\n}}')
    with pytest.raises(LightFTError, match=r"bad.json:2: not valid JSON"):
        DeepSpeed(config=str(bad))


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_overlay_composes_with_a_recipe(overlay, monkeypatch):
    """Strategy overlays instantiate on 2 CPU processes (FSDP v1: refused there by the check, as it must be);
    hardware overlays parse (GPU ones with the accelerator overridden, no GPU here)."""
    monkeypatch.chdir(ROOT)
    trainer = yaml.safe_load(overlay.read_text())["trainer"]
    args = ["--config", "configs/debug/tiny.yaml", "--config", "configs/trainer/cpu2.yaml", "--config", str(overlay)]
    if "strategy" not in trainer:
        args += ["--trainer.accelerator", "cpu", "--trainer.precision", "32-true"]
        cli = LightFTCLI(args=args, run=False)
        assert cli.trainer.num_devices == trainer["devices"] and cli.trainer.num_nodes == trainer.get("num_nodes", 1)
        return
    if trainer["strategy"]["class_path"] == "lightft.strategies.FSDP":
        with pytest.raises(LightFTError, match="runs on GPUs only"):
            LightFTCLI(args=args, run=False)
        return
    cli = LightFTCLI(args=args, run=False)
    assert type(cli.trainer.strategy).__name__ == trainer["strategy"]["class_path"].rsplit(".", 1)[-1]


@pytest.mark.parametrize(
    ("method", "strategy", "kind", "stage", "accelerator", "match"),
    [
        ("SFTModule", peft.LoRA(), "fsdp", None, "cpu", "runs on GPUs only"),
        ("SFTModule", peft.LoRA8bit(), "fsdp2", None, "gpu", "8-bit .* cannot be sharded"),
        ("SFTModule", peft.QLoRA(), "deepspeed", 3, "gpu", "cannot be partitioned by DeepSpeed ZeRO-3"),
        ("SFTModule", peft.QLoRA(), "fsdp", None, "gpu", "set quant_storage: bfloat16"),
        ("PPOModule", peft.LoRA(), "deepspeed", 3, "gpu", "generation under DeepSpeed ZeRO-3"),
    ],
)
def test_impossible_combinations_name_the_fix(method, strategy, kind, stage, accelerator, match):
    message = strategy_conflict(method, strategy, kind, stage, accelerator, "bf16-mixed")
    assert message is not None and re.search(match, message)


def test_possible_combinations_pass():
    for kind, stage in (("ddp", None), ("fsdp2", None), ("deepspeed", 2)):
        assert strategy_conflict("SFTModule", peft.QLoRA(), kind, stage, "gpu", "bf16-mixed") is None
    assert strategy_conflict("SFTModule", peft.QLoRA(quant_storage="bfloat16"), "fsdp", None, "gpu", "bf16") is None
    assert strategy_conflict("PPOModule", peft.LoRA(), "fsdp2", None, "cpu", "32-true") is None
    assert strategy_conflict("DPOModule", peft.LoRA(), "deepspeed", 3, "cpu", "32-true") is None


def test_cli_refuses_fsdp_on_cpu_before_loading(tmp_path, capsys):
    line = fit_fails(capsys, tmp_path, "--config", str(ROOT / "configs" / "trainer" / "fsdp.yaml"))
    assert "trainer.strategy: fsdp runs on GPUs only" in line
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_compatibility_doc_is_current():
    assert (ROOT / "docs" / "compatibility.md").read_text() == compatibility_markdown(), (
        "docs/compatibility.md is stale: run python docs/make_compatibility.py"
    )
