import pytest
import torch

from lightft import DPOModule
from lightft.errors import LightFTError
from lightft.losses import DPOLoss, IPOLoss, KTOLoss, ORPOLoss, SimPOLoss
from lightft.optim import OptimizerConfig, SchedulerConfig
from lightft.peft import FullFineTune, LoRA
from tests.helpers.preference import MetricLog, pair_data, trainer


def dpo_module(spec, loss=None, reference="live", peft=None, lr=3e-3):
    return DPOModule(
        spec,
        peft=peft or LoRA(r=8, alpha=16, dropout=0.0),
        optimizer=OptimizerConfig(lr=lr),
        scheduler=SchedulerConfig(name="constant"),
        gradient_checkpointing=False,
        loss=loss or DPOLoss(beta=0.1),
        reference=reference,
    )


def test_dpo_at_init_is_log_2_then_margins_and_accuracy_rise(tmp_path, tiny_spec):
    module, data = dpo_module(tiny_spec), pair_data(tmp_path, tiny_spec)
    before = trainer(tmp_path).validate(module, datamodule=data, verbose=False)[0]
    assert before["val/loss"] == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-5)  # policy == reference
    log = MetricLog()
    trainer(tmp_path, max_steps=16, limit_val_batches=0, callbacks=[log]).fit(module, datamodule=data)
    after = trainer(tmp_path).validate(module, datamodule=data, verbose=False)[0]
    assert after["val/accuracy"] >= 0.9 and after["val/margin"] > 0.5
    assert log.steps[-1]["rewards/margins"] > log.steps[0]["rewards/margins"]
    assert {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen", "logps/rejected"} <= set(
        log.steps[-1]
    )


@pytest.mark.parametrize(
    ("peft", "loss", "first"),
    [
        (LoRA(r=8, alpha=16, dropout=0.0), DPOLoss(beta=0.1), 0.693147),  # log 2: policy == reference
        (FullFineTune(), DPOLoss(beta=0.1), 0.693147),
        # IPO averages both sides per token: h = 0 at init, loss = (1 / 2 tau)^2 (the reference's token counts too)
        (LoRA(r=8, alpha=16, dropout=0.0), IPOLoss(tau=0.1), 25.0),
    ],
    ids=["dpo-lora", "dpo-full", "ipo-lora"],
)
def test_precomputed_reference_gives_the_live_losses(tmp_path, tiny_spec, peft, loss, first):
    losses = {}
    for reference in ("live", "precomputed"):
        torch.manual_seed(0)
        log = MetricLog()
        module = dpo_module(tiny_spec, loss=loss, reference=reference, peft=peft, lr=1e-3)
        fit = trainer(tmp_path / reference, max_steps=6, limit_val_batches=0, callbacks=[log])
        fit.fit(module, datamodule=pair_data(tmp_path, tiny_spec))
        losses[reference] = [s["train/loss"] for s in log.steps]
        if reference == "precomputed":
            assert module.reference_model is None and set(module.reference_logps) == {"train", "val"}
        else:
            assert (module.reference_model is not None) == isinstance(peft, FullFineTune)
    assert losses["live"][0] == pytest.approx(first, abs=1e-4)
    assert losses["precomputed"] == pytest.approx(losses["live"], abs=1e-4)


@pytest.mark.parametrize("loss", [SimPOLoss(), ORPOLoss()], ids=["simpo", "orpo"])
def test_reference_free_losses_train_without_a_reference(tmp_path, tiny_spec, loss):
    module, data = dpo_module(tiny_spec, loss=loss), pair_data(tmp_path, tiny_spec)
    module.peft.disabled = None  # any use of a reference would fail
    log = MetricLog()
    trainer(tmp_path, max_steps=8, limit_val_batches=0, callbacks=[log]).fit(module, datamodule=data)
    assert log.steps[-1]["train/loss"] < log.steps[0]["train/loss"]
    assert log.steps[-1]["rewards/margins"] > log.steps[0]["rewards/margins"]


def test_kto_cannot_precompute_its_reference(tiny_spec):
    with pytest.raises(LightFTError, match="reference: live"):
        dpo_module(tiny_spec, loss=KTOLoss(), reference="precomputed")
