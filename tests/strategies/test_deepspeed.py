"""The DeepSpeed preset builds the expected DeepSpeed config per ZeRO stage and merges a raw JSON over it. Training
and resuming under it on 2 CPU processes: tests/test_distributed.py, tests/test_sharded.py; its checkpoint check:
tests/test_safe_loading.py."""

import json

import pytest
from lightning.pytorch.strategies import DeepSpeedStrategy

from lightft.errors import LightFTError
from lightft.strategies import DeepSpeed, read_deepspeed_json, strategy_kind, zero_stage


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
    assert read_deepspeed_json(str(raw)) == json.loads(raw.read_text()) and read_deepspeed_json(None) is None


def test_deepspeed_preset_errors(tmp_path):
    with pytest.raises(LightFTError, match="offload_parameters: needs stage: 3"):
        DeepSpeed(stage=2, offload_parameters=True)
    with pytest.raises(LightFTError, match="no DeepSpeed JSON at"):
        DeepSpeed(config=str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"zero_optimization": {\n  "stage": 3,,\n}}')
    with pytest.raises(LightFTError, match=r"bad.json:2: not valid JSON"):
        DeepSpeed(config=str(bad))
