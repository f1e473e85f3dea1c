"""Quantization-aware training (`qat:`): where the fake quantizers go, that they act, that convert after a merge is
exactly post-training quantization of the same float weights, the methods that train with it, the refusals, exact
resume and the CLI.
"""

import copy
import math

import lightning.pytorch as pl
import pytest
import torch
import yaml
from torch import nn
from torchao.quantization import quantize_
from torchao.quantization.qat import FakeQuantizedLinear

from lightft import DPOModule, RewardModelModule, SFTModule
from lightft.callbacks import VerifiedCheckpoint
from lightft.cli import main
from lightft.commands.export import load_trained
from lightft.compat import check_compatibility
from lightft.errors import LightFTError
from lightft.losses import DPOLoss
from lightft.optim import OptimizerConfig, SchedulerConfig
from lightft.peft import FullFineTune, LoRA, LoRA8bit, PromptTuning, QLoRA
from lightft.quantization.qat import check, convert, fake_quantized, float_forward, prepare
from lightft.quantization.schemes import QuantScheme, linear_filter, quantizable_linears
from tests.conftest import ROOT
from tests.conftest import cpu_trainer as trainer
from tests.helpers.preference import pair_data
from tests.helpers.preference import trainer as pair_trainer
from tests.modules.test_sft import datamodule

INT4 = QuantScheme("int4_weight_only", group_size=32)
INT8_DYNAMIC = QuantScheme("int8_dynamic")
LAYERS = 14  # the tiny Llama: 2 decoder layers x (q, k, v, o, gate, up, down)


def sft(spec, peft=None, qat=INT4, lr=1e-2):
    return SFTModule(
        spec,
        peft=peft or LoRA(r=4, dropout=0.0),
        optimizer=OptimizerConfig(lr=lr),
        scheduler=SchedulerConfig(name="constant"),
        gradient_checkpointing=False,
        qat=qat,
    )


def built(module, tokenizer):
    module.tokenizer = tokenizer
    module.model = module.build_model()
    return module


def probe(model):
    with torch.no_grad():
        return model(input_ids=torch.arange(1, 33).unsqueeze(0)).logits


def quantized_weights(model):
    """Every torchao-quantized linear's integer data, scales and zero points."""
    return {
        name: (m.weight.qdata, m.weight.scale, m.weight.zero_point, m.weight.activation_quantization)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and hasattr(m.weight, "qdata")
    }


@pytest.mark.parametrize("peft", [LoRA(r=4), FullFineTune(), PromptTuning(num_virtual_tokens=4)], ids=type)
def test_prepare_fake_quantizes_exactly_the_quantizable_linears(tiny_spec, tokenizer, peft):
    model = built(sft(tiny_spec, peft=peft), tokenizer).model
    fake = set(fake_quantized(model))
    assert len(fake) == LAYERS
    assert fake == {name for name, _ in quantizable_linears(model)}  # what a post-training quantization quantizes
    assert all(name.endswith(".base_layer") for name in fake) == isinstance(peft, LoRA)  # inside LoRA's layers
    linears = {name for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert {n for n in linears - fake if "lora_" not in n} == {n for n in linears if n.endswith("lm_head")}
    for name, module in model.named_modules():
        if "lora_" in name or name.endswith("lm_head"):
            assert not isinstance(module, FakeQuantizedLinear), name
    # the fake quantizers hold no state: the state dict (what checkpoints and exports hold) is the float model's
    plain = built(sft(tiny_spec, peft=peft, qat=None), tokenizer).model
    assert model.state_dict().keys() == plain.state_dict().keys()
    assert all(p.requires_grad == q.requires_grad for p, q in zip(model.parameters(), plain.parameters(), strict=True))


def test_fake_quantization_changes_the_forward_and_nothing_else(tiny_spec, tokenizer):
    for qat in (INT4, INT8_DYNAMIC):
        pl.seed_everything(0)
        quantized = built(sft(tiny_spec, qat=qat), tokenizer).model
        pl.seed_everything(0)
        plain = built(sft(tiny_spec, qat=None), tokenizer).model
        assert not torch.equal(probe(quantized), probe(plain))
        with float_forward(quantized):
            assert torch.equal(probe(quantized), probe(plain))  # the same weights: the difference is the quantizer
        assert not torch.equal(probe(quantized), probe(plain))


def test_prepare_takes_over_the_weights_without_initialising_or_drawing_random_numbers():
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    weights = [layer.weight for layer in model[::2]]
    state = torch.get_rng_state()
    prepare(model, INT4)
    assert torch.equal(torch.get_rng_state(), state)
    assert [layer.weight for layer in model[::2]] == weights and isinstance(model[0], FakeQuantizedLinear)
    prepare(model, INT4)  # idempotent
    assert len(fake_quantized(model)) == 2


def test_sft_lora_trains_with_finite_loss_under_fake_quantization(tmp_path, tiny_spec):
    module = sft(tiny_spec)
    run = trainer(tmp_path, max_steps=3)
    run.fit(module, datamodule(tiny_spec))
    assert math.isfinite(float(run.callback_metrics["train/loss"]))
    assert len(fake_quantized(module.model)) == LAYERS
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in module.parameters())


@pytest.mark.parametrize("scheme", [INT4, INT8_DYNAMIC], ids=lambda s: s.label())
def test_convert_after_merge_is_exactly_post_training_quantization(tmp_path, tiny_spec, tokenizer, scheme):
    """QAT prepare -> train -> merge -> convert == PTQ of the merged float weights, bit for bit (both apply the
    same torchao config to the same float weights; prepare never touches them).
    """
    module = sft(tiny_spec, qat=scheme)
    trainer(tmp_path, max_steps=3).fit(module, datamodule(tiny_spec))
    trained = {k: v.detach().clone() for k, v in module.state_dict().items() if k in module.trainable_keys()}
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in trained.items())  # the adapter moved off zero
    qat = convert(module.peft.merge(copy.deepcopy(module.model)), scheme)

    float_module = built(sft(tiny_spec, qat=None), tokenizer)
    float_module.load_state_dict(trained, strict=False)
    ptq = float_module.peft.merge(float_module.model)
    quantize_(ptq, scheme.torchao_config(), filter_fn=linear_filter)

    assert not fake_quantized(qat)
    expected, got = quantized_weights(ptq), quantized_weights(qat)
    assert len(expected) == LAYERS and expected.keys() == got.keys()
    for name, (qdata, scale, zero_point, activations) in expected.items():
        assert torch.equal(got[name][0], qdata) and torch.equal(got[name][1], scale), name
        assert torch.equal(got[name][2], zero_point) and got[name][3] == activations, name
    assert not hasattr(qat.lm_head.weight, "qdata")  # the head stays float
    assert torch.equal(probe(qat), probe(ptq))


def test_an_export_rebuild_keeps_the_fake_quantizers_so_convert_follows_the_merge(tmp_path, tiny_spec):
    ckpt = VerifiedCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    module = sft(tiny_spec, qat=INT8_DYNAMIC)
    trainer(tmp_path, max_steps=2, callbacks=[ckpt], enable_checkpointing=True).fit(module, datamodule(tiny_spec))
    rebuilt = load_trained(tmp_path / "ckpt" / "last.ckpt", quantize=False)  # how `lightft export --merge` loads
    assert rebuilt.qat == INT8_DYNAMIC and len(fake_quantized(rebuilt.model)) == LAYERS
    module.model.eval()
    assert torch.equal(probe(rebuilt.model), probe(module.model))
    exported = convert(rebuilt.peft.merge(rebuilt.model), INT8_DYNAMIC)
    assert torch.equal(probe(exported), probe(convert(module.peft.merge(module.model), INT8_DYNAMIC)))


def test_export_of_a_qat_run_converts_when_merged_and_stays_float_as_an_adapter_or_gguf(tmp_path, tiny_spec, capsys):
    from lightft.commands.export import load_exported
    from lightft.quantization import ptq

    ckpt = VerifiedCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    module = sft(tiny_spec, qat=INT8_DYNAMIC)
    trainer(tmp_path, max_steps=2, callbacks=[ckpt], enable_checkpointing=True).fit(module, datamodule(tiny_spec))
    last = str(tmp_path / "ckpt" / "last.ckpt")
    main(["export", "--ckpt", last, "--out", str(tmp_path / "merged"), "--merge", "true"])
    assert "converted to int8_dynamic/int8/symmetric/per_channel (trained with QAT)" in capsys.readouterr().out
    merged = ptq.load_quantized(tmp_path / "merged")
    assert set(ptq.stored_dtypes(merged).values()) == {"int8"}
    rebuilt = load_trained(last, quantize=False)
    assert torch.equal(probe(merged), probe(convert(rebuilt.peft.merge(rebuilt.model), INT8_DYNAMIC)))
    # the adapter is float: it reloads over a plain base to the QAT model with its fake quantizers off
    main(["export", "--ckpt", last, "--out", str(tmp_path / "adapter")])
    adapter, _ = load_exported(tmp_path / "adapter")
    rebuilt = load_trained(last)
    with float_forward(rebuilt.model):
        torch.testing.assert_close(probe(adapter), probe(rebuilt.model), atol=1e-5, rtol=1e-5)
    main(["export", "--ckpt", last, "--out", str(tmp_path / "gguf"), "--format", "gguf", "--quant", "f32"])
    assert (tmp_path / "gguf" / "model-f32.gguf").is_file()


@pytest.mark.parametrize("peft", [LoRA(r=8, alpha=16, dropout=0.0), FullFineTune()], ids=["lora", "full"])
def test_dpo_with_qat_starts_at_its_reference_and_trains(tmp_path, tiny_spec, peft):
    module = DPOModule(
        tiny_spec,
        peft=peft,
        optimizer=OptimizerConfig(lr=3e-3),
        scheduler=SchedulerConfig(name="constant"),
        gradient_checkpointing=False,
        loss=DPOLoss(beta=0.1),
        qat=INT8_DYNAMIC,
    )
    data = pair_data(tmp_path, tiny_spec, n_train=16, n_val=8)
    before = pair_trainer(tmp_path).validate(module, datamodule=data, verbose=False)[0]
    # the reference (adapter disabled, or full fine-tuning's frozen copy) is fake-quantized like the policy: equal at
    # step 0, as without QAT
    assert before["val/loss"] == pytest.approx(math.log(2), abs=1e-5)
    run = pair_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    run.fit(module, datamodule=data)
    assert math.isfinite(float(run.callback_metrics["train/loss"])) and len(fake_quantized(module.model)) == LAYERS


def test_reward_model_with_qat_trains_and_keeps_its_head_float(tmp_path, tiny_spec):
    module = RewardModelModule(
        tiny_spec,
        peft=LoRA(r=8, alpha=16, dropout=0.0),
        optimizer=OptimizerConfig(lr=3e-3),
        scheduler=SchedulerConfig(name="constant"),
        gradient_checkpointing=False,
        qat=INT4,
    )
    run = pair_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    run.fit(module, datamodule=pair_data(tmp_path, tiny_spec, n_train=16, n_val=8))
    assert math.isfinite(float(run.callback_metrics["train/loss"]))
    fake = fake_quantized(module.model)
    assert len(fake) == LAYERS and not any("score" in name for name in fake)


@pytest.mark.parametrize(
    ("peft", "scheme", "key", "says"),
    [
        (QLoRA(), INT4, "model.init_args.qat:", "needs the float weights; use LoRA"),
        (LoRA8bit(), INT4, "model.init_args.qat:", "needs the float weights; use LoRA"),
        (LoRA(), QuantScheme("nf4"), "model.init_args.qat.scheme:", "cannot fake-quantize nf4"),
        (LoRA(), QuantScheme("int8_static"), "model.init_args.qat.scheme:", "cannot fake-quantize int8_static"),
        (LoRA(), QuantScheme("int8_weight_only", mapping="affine"), "model.init_args.qat.mapping:", "symmetric"),
        (LoRA(), QuantScheme(granularity="per_tensor"), "model.init_args.qat.granularity:", "per_channel"),
        (LoRA(), QuantScheme("int4_weight_only", group_size=48), "model.init_args.qat.group_size:", "48"),
    ],
    ids=["qlora", "lora8bit", "nf4", "int8_static", "affine", "per_tensor", "group_size"],
)
def test_config_time_refusals_name_the_key(tiny_spec, peft, scheme, key, says):
    module = SFTModule(tiny_spec, peft=peft, qat=scheme)
    with pytest.raises(LightFTError) as err:
        check_compatibility(module, datamodule(tiny_spec))  # where the CLI and `setup` check a config
    message = str(err.value)
    assert message.startswith(key) and says in message and "\n" not in message


def test_prepare_refuses_quantized_weights_and_models_without_linears():
    model = nn.Sequential(nn.Linear(64, 32))
    quantize_(model, INT4.torchao_config(), filter_fn=linear_filter)
    with pytest.raises(LightFTError, match="model.init_args.qat: 0 holds quantized weights"):
        prepare(model, INT4)
    with pytest.raises(LightFTError, match="no nn.Linear layer"):
        prepare(nn.Sequential(nn.Embedding(8, 64)), INT4)
    with pytest.raises(LightFTError, match="no fake-quantized layer to convert"):
        convert(nn.Sequential(nn.Linear(64, 32)), INT4)
    check(INT4, FullFineTune())  # a float base with a QAT scheme passes


def test_exact_resume_with_qat(tmp_path, tiny_spec):
    """3 steps, checkpoint, resume to 6 == 6 uninterrupted steps, bit for bit; the checkpoint holds the same keys as
    without QAT (the fake quantizers have no state to save).
    """
    kwargs = dict(batch_size=2, n=16)

    def qat_module():
        return sft(tiny_spec, peft=LoRA(r=4, dropout=0.1), qat=INT8_DYNAMIC, lr=3e-3)

    pl.seed_everything(0)
    straight = qat_module()
    trainer(tmp_path, max_steps=6, accumulate_grad_batches=2).fit(straight, datamodule(tiny_spec, **kwargs))

    pl.seed_everything(0)
    ckpt = VerifiedCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = qat_module()
    trainer(tmp_path, max_steps=3, accumulate_grad_batches=2, callbacks=[ckpt], enable_checkpointing=True).fit(
        first, datamodule(tiny_spec, **kwargs)
    )
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert set(saved["state_dict"]) == first.trainable_keys() and all("lora_" in k for k in saved["state_dict"])
    assert saved["hyper_parameters"]["qat"]["scheme"] == "int8_dynamic"
    resumed = qat_module()
    trainer(tmp_path, max_steps=6, accumulate_grad_batches=2).fit(
        resumed, datamodule(tiny_spec, **kwargs), ckpt_path=tmp_path / "ckpt" / "last.ckpt"
    )
    compared = 0
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters(), strict=True):
        if a.requires_grad:
            assert torch.equal(b, a), name
            compared += 1
    assert compared == 2 * LAYERS


@pytest.mark.parametrize("config", ["tiny.yaml", "tiny_dpo.yaml", "tiny_rm.yaml"])
def test_print_config_shows_qat(capsys, config):
    path = str(ROOT / "configs" / "debug" / config)
    with pytest.raises(SystemExit):
        main(["fit", "--config", path, "--model.init_args.qat.scheme", "int4_weight_only", "--print_config"])
    qat = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["qat"]
    assert qat == {"scheme": "int4_weight_only", "mapping": "symmetric", "granularity": None, "group_size": 32,
                   "bits": 8, "keep_float": []}  # fmt: skip
    with pytest.raises(SystemExit):
        main(["fit", "--config", path, "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["qat"] is None
