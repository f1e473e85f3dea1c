from lightft import DPOModule
from lightft.checkpoints.hparams import plain_hparams
from lightft.losses import IPOLoss
from lightft.peft import LoRA, QLoRA
from tests.modules.test_sft import module


def test_python_built_modules_store_plain_hyperparameters(tiny_spec):
    hparams = plain_hparams(module(tiny_spec, peft=QLoRA(r=3, quant_type="fp4")))
    assert hparams["_class_path"] == "lightft.modules.sft.SFTModule"
    peft = hparams["peft"]
    assert peft["class_path"] == "lightft.peft.lora.QLoRA"
    assert peft["init_args"]["r"] == 3 and peft["init_args"]["quant_type"] == "fp4"
    assert hparams["model"]["path"] == tiny_spec.path and hparams["optimizer"]["name"] == "adamw"


def test_arguments_forwarded_by_kwargs_are_hyperparameters_too(tiny_spec):
    """A method takes its own arguments and forwards the shared ones with **kwargs: both reach the checkpoint."""
    dpo = DPOModule(
        tiny_spec, loss=IPOLoss(tau=0.2), reference="precomputed", peft=LoRA(r=4), gradient_checkpointing=False
    )
    hparams = plain_hparams(dpo)
    assert hparams["reference"] == "precomputed" and hparams["loss"]["init_args"]["tau"] == 0.2
    assert hparams["peft"]["init_args"]["r"] == 4 and hparams["gradient_checkpointing"] is False
    assert hparams["model"]["path"] == tiny_spec.path
    assert "kwargs" not in hparams
