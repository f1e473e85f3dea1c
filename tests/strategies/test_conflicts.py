"""The strategy x method x PEFT compatibility matrix (`lightft.compat.strategy_conflict`) refuses impossible
combinations with the fix named, lets the possible ones pass, and docs/compatibility.md is current."""

import re

import pytest

from lightft import DPOModule, PPOModule, RewardModelModule, SFTModule, peft
from lightft.compat import compatibility_markdown, strategy_conflict
from tests.conftest import ROOT

# each built-in method's declaration, what the checks read (as docs/make_compatibility.py passes them)
METHODS = {cls.__name__: cls.method for cls in (SFTModule, RewardModelModule, DPOModule, PPOModule)}


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
    message = strategy_conflict(METHODS[method], strategy, kind, stage, accelerator, "bf16-mixed")
    assert message is not None and re.search(match, message)


def test_possible_combinations_pass():
    for kind, stage in (("ddp", None), ("fsdp2", None), ("deepspeed", 2)):
        assert strategy_conflict(METHODS["SFTModule"], peft.QLoRA(), kind, stage, "gpu", "bf16-mixed") is None
    qlora_bf16 = peft.QLoRA(quant_storage="bfloat16")
    assert strategy_conflict(METHODS["SFTModule"], qlora_bf16, "fsdp", None, "gpu", "bf16") is None
    assert strategy_conflict(METHODS["PPOModule"], peft.LoRA(), "fsdp2", None, "cpu", "32-true") is None
    assert strategy_conflict(METHODS["DPOModule"], peft.LoRA(), "deepspeed", 3, "cpu", "32-true") is None


def test_compatibility_doc_is_current():
    assert (ROOT / "docs" / "compatibility.md").read_text() == compatibility_markdown(METHODS), (
        "docs/compatibility.md is stale: run python docs/make_compatibility.py"
    )
