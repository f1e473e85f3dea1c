import pytest

from lightft import DPOModule, PPOModule, PreferenceDataModule, PromptDataModule, RewardModelModule, SFTModule
from lightft.data.batches import PairBatch, PromptBatch, TokenBatch, UnpairedBatch
from lightft.errors import LightFTError
from lightft.losses import IPOLoss, KTOLoss, SimPOLoss
from lightft.peft import FullFineTune, LoRA
from lightft.rl.rewards import KeywordReward
from tests.conftest import write_jsonl
from tests.helpers.extensions import UndeclaredModule
from tests.helpers.preference import pair_data


def test_each_built_in_method_declares_itself():
    assert SFTModule.method.batch is TokenBatch and SFTModule.method.rows_per_example == 1
    assert RewardModelModule.method.head == "reward" and not RewardModelModule.method.lm_logps
    assert DPOModule.method.batch is PairBatch and DPOModule.method.rows_per_example == 2
    assert PPOModule.method.rollout and PPOModule.method.batch is PromptBatch


@pytest.mark.parametrize(
    ("loss", "reference", "peft", "batch", "held"),
    [
        (IPOLoss(), "live", LoRA(), PairBatch, "adapter"),
        (IPOLoss(), "live", FullFineTune(), PairBatch, "frozen_copy"),
        (IPOLoss(), "precomputed", FullFineTune(), PairBatch, "none"),
        (SimPOLoss(), "live", LoRA(), PairBatch, "none"),  # reference-free
        (KTOLoss(), "live", LoRA(), UnpairedBatch, "adapter"),
    ],
)
def test_dpo_describes_what_its_settings_make_it(tiny_spec, loss, reference, peft, batch, held):
    method = DPOModule(tiny_spec, loss=loss, reference=reference, peft=peft).describe()
    assert method.batch is batch and method.reference == held


def test_a_data_module_of_the_wrong_class_is_refused_naming_the_right_one(tmp_path, tiny_spec):
    ppo = PPOModule(tiny_spec, reward=KeywordReward("e"))
    with pytest.raises(LightFTError, match=r"data.class_path: PPOModule trains on PromptDataModule; use lightft"):
        ppo.check_datamodule(pair_data(tmp_path, tiny_spec))


def test_data_of_the_wrong_kind_is_refused_naming_both(tmp_path, tiny_spec):
    rows = [{"prompt": "Q", "completion": " A", "label": i % 2 == 0} for i in range(4)]
    unpaired = PreferenceDataModule(train=str(write_jsonl(tmp_path / "kto.jsonl", rows)), tokenizer=tiny_spec)
    with pytest.raises(LightFTError, match="RewardModelModule trains on chosen/rejected pairs, this data gives unp"):
        RewardModelModule(tiny_spec).check_datamodule(unpaired)
    DPOModule(tiny_spec, loss=KTOLoss()).check_datamodule(unpaired)  # what KTO trains on
    prompts = PromptDataModule(train=str(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Q"}])), tokenizer=tiny_spec)
    PPOModule(tiny_spec, reward=KeywordReward("e")).check_datamodule(prompts)


def test_a_module_without_a_declaration_is_refused_by_name(tiny_spec):
    with pytest.raises(LightFTError, match="UndeclaredModule declares no `method"):
        UndeclaredModule(tiny_spec).describe()
