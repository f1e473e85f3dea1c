import pytest
import torch

from lightft.optim import OptimizerConfig, SchedulerConfig, build_optimizer, build_scheduler, parameter_groups


def tiny():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.LayerNorm(64), torch.nn.Linear(64, 8))


def test_weight_decay_only_on_matrices():
    groups = parameter_groups(tiny(), weight_decay=0.1)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert all(p.ndim >= 2 for p in groups[0]["params"]) and all(p.ndim < 2 for p in groups[1]["params"])


@pytest.mark.parametrize("name", ["adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"])
def test_every_optimizer_steps_on_cpu(name):
    model = tiny()
    optimizer = build_optimizer(parameter_groups(model, 0.0), OptimizerConfig(name=name, lr=1e-2))
    x = torch.randn(16, 64)
    losses = []
    for _ in range(20):
        loss = model(x).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    if name != "adamw":
        assert type(optimizer).__module__.startswith("bitsandbytes")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("constant", [0.0, 0.5, 1.0, 1.0, 1.0, 1.0]),
        ("linear", [0.0, 0.5, 1.0, 2 / 3, 1 / 3, 0.0]),
        ("cosine", [0.0, 0.5, 1.0, 0.75, 0.25, 0.0]),
    ],
)
def test_schedules_warm_up_then_decay(name, expected):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, SchedulerConfig(name=name, warmup_steps=2), total_steps=5)
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx(expected, abs=1e-6)


def test_warmup_ratio():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, SchedulerConfig(name="constant", warmup_ratio=0.1), total_steps=100)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5)
