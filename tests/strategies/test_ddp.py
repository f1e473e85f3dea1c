"""The DDP preset passes its arguments to Lightning's `DDPStrategy`."""

from lightning.pytorch.strategies import DDPStrategy

from lightft.strategies import DDP, strategy_kind


def test_ddp_preset():
    strategy = DDP(static_graph=True, timeout_minutes=5)
    assert isinstance(strategy, DDPStrategy) and strategy_kind(strategy) == "ddp"
    assert strategy._ddp_kwargs == {
        "find_unused_parameters": False, "static_graph": True, "gradient_as_bucket_view": True,
    }  # fmt: skip
    assert strategy._timeout.total_seconds() == 300
