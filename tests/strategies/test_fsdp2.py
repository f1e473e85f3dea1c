"""The FSDP2 preset's configuration and the arguments it gives `fully_shard`. Sharded training, checkpoints and
generation on 2 CPU processes: tests/test_sharded.py and tests/test_distributed.py."""

import pytest
import torch
from lightning.pytorch.strategies import ModelParallelStrategy

from lightft.strategies import FSDP2, strategy_kind


def test_fsdp2_preset():
    strategy = FSDP2(reshard_after_forward=False, param_dtype="bfloat16")
    assert isinstance(strategy, ModelParallelStrategy) and strategy_kind(strategy) == "fsdp2"
    assert not strategy.save_distributed_checkpoint  # one gathered file of trainable weights by default
    assert FSDP2(save_distributed_checkpoint=True).save_distributed_checkpoint


@pytest.mark.parametrize("hybrid", [False, True])
def test_shard_kwargs_follow_the_arguments(hybrid):
    strategy = FSDP2(reshard_after_forward=False, param_dtype="bfloat16", hybrid=hybrid)
    mesh = {"tensor_parallel": "shard axis"}
    strategy._device_mesh = mesh  # what `setup_environment` builds once the processes exist
    kwargs = strategy.shard_kwargs()
    assert kwargs["mesh"] == (mesh if hybrid else "shard axis") and kwargs["reshard_after_forward"] is False
    policy = kwargs["mp_policy"]
    assert policy.param_dtype == policy.reduce_dtype == torch.bfloat16  # reduce_dtype follows param_dtype
    assert "offload_policy" not in kwargs
