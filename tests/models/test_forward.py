"""The chunked LM-head path (`lightft.models.forward`) against the model's full logits.

Every method's loss and gradients are equal to 1e-5 (fp32) with `compute.chunked_loss` on and off, for chunk sizes
that do and do not divide the number of trained tokens, tied and untied embeddings, LoRA on the output layer and
prompt-style PEFT; the prompt's positions never reach the output layer.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lightft import DPOModule, PPOModule, PromptDataModule, SFTDataModule, SFTModule
from lightft.data.sources import DatasetSpec
from lightft.generation import GenerationSettings
from lightft.losses import DPOLoss, IPOLoss, KTOLoss, ORPOLoss, SimPOLoss
from lightft.models.forward import ComputeSettings, OutputHead, check_output_head, hidden_states, token_logps
from lightft.models.loading import ModelSpec, load_model
from lightft.modules.ppo import PPOSettings
from lightft.peft import FullFineTune, LoRA, PromptTuning
from lightft.rl.rewards import KeywordReward
from lightft.rl.rollout import sample
from tests.conftest import QUICKSTART, TINY, write_jsonl
from tests.helpers.preference import pair_data

CHUNKED = {"7": ComputeSettings(loss_chunk_size=7), "16": ComputeSettings(loss_chunk_size=16)}
FULL = ComputeSettings(chunked_loss=False)


@pytest.fixture(scope="module")
def tied_spec(tmp_path_factory) -> ModelSpec:
    """The tiny Llama with its output layer tied to the input embeddings."""
    out = tmp_path_factory.mktemp("tiny-tied")
    for name in TINY.iterdir():
        shutil.copy(name, out / name.name)
    config = json.loads((TINY / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    return ModelSpec(str(out), random_init=True, seed=0)


def twins(make, compute: ComputeSettings):
    """(chunked, full): the same module (same seed, same initial weights) with each loss path."""
    modules = []
    for settings in (compute, FULL):
        torch.manual_seed(0)
        module = make(settings)
        module.configure_model()
        modules.append(module)
    first, second = (dict(m.named_parameters()) for m in modules)
    assert all(torch.equal(first[name], second[name]) for name in first)
    return modules


def assert_same_loss_and_grads(loss_of, chunked, full, tolerance: float = 1e-5) -> None:
    losses = []
    for module in (chunked, full):
        torch.manual_seed(1)
        loss = loss_of(module)
        loss.backward()
        losses.append(loss.detach())
    assert chunked.compute.chunked_loss and not full.compute.chunked_loss  # no silent fall-back to full logits
    torch.testing.assert_close(losses[0], losses[1], rtol=tolerance, atol=tolerance)
    grads = [{n: p.grad for n, p in m.named_parameters() if p.grad is not None} for m in (chunked, full)]
    assert grads[0] and grads[0].keys() == grads[1].keys()
    for name, grad in grads[1].items():
        torch.testing.assert_close(grads[0][name], grad, rtol=tolerance, atol=tolerance, msg=name)


def sft_batch(spec, packing=False):
    data = SFTDataModule(
        train=DatasetSpec(str(QUICKSTART / "train.jsonl"), max_examples=12),
        tokenizer=spec,
        max_length=96,
        batch_size=4,
        packing=packing,
    )
    data.setup("fit")
    return next(iter(data.train_dataloader()))


def sft_module(spec, peft, compute):
    return SFTModule(spec, peft=peft, gradient_checkpointing=False, compute=compute)


@pytest.mark.parametrize("chunk", CHUNKED)
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_sft_full_fine_tune_same_loss_and_gradients(tiny_spec, tied_spec, chunk, tied):
    spec = tied_spec if tied else tiny_spec
    batch = sft_batch(spec)
    trained = int((batch.labels[:, 1:] != -100).sum())
    assert trained % 7 and trained > 16  # chunks of 7 leave a remainder; chunks of 16 make several
    chunked, full = twins(lambda c: sft_module(spec, FullFineTune(), c), CHUNKED[chunk])
    assert_same_loss_and_grads(lambda m: m.token_loss(batch)[0], chunked, full)


@pytest.mark.parametrize(
    "peft",
    [
        LoRA(r=4, dropout=0.0, target_modules=["q_proj", "v_proj", "lm_head"]),
        PromptTuning(num_virtual_tokens=4),
    ],
    ids=["lora-on-lm-head", "prompt-tuning"],
)
def test_sft_peft_same_loss_and_gradients(tiny_spec, peft):
    batch = sft_batch(tiny_spec)
    chunked, full = twins(lambda c: sft_module(tiny_spec, peft, c), CHUNKED["7"])
    assert_same_loss_and_grads(lambda m: m.token_loss(batch)[0], chunked, full)


def test_sft_packed_rows_same_loss_and_gradients(tiny_spec):
    batch = sft_batch(tiny_spec, packing=True)
    assert batch.packed
    chunked, full = twins(lambda c: sft_module(tiny_spec, LoRA(r=4, dropout=0.0), c), CHUNKED["16"])
    assert_same_loss_and_grads(lambda m: m.token_loss(batch)[0], chunked, full)


def pair_batch(tmp_path, spec):
    data = pair_data(tmp_path, spec, n_train=8, n_val=4, batch_size=4)
    data.setup("fit")
    return data, next(iter(data.train_dataloader()))


@pytest.mark.parametrize(
    "loss", [DPOLoss(beta=0.1), IPOLoss(), SimPOLoss(), ORPOLoss()], ids=lambda x: type(x).__name__
)
@pytest.mark.parametrize("peft", [LoRA(r=4, dropout=0.0), FullFineTune()], ids=["lora", "full"])
def test_dpo_family_same_loss_and_gradients(tmp_path, tiny_spec, loss, peft):
    _, batch = pair_batch(tmp_path, tiny_spec)

    def make(compute):
        return DPOModule(tiny_spec, peft=peft, gradient_checkpointing=False, loss=loss, compute=compute)

    def loss_of(module):
        # a policy that moved off the reference, so the loss is not at its starting value
        with torch.no_grad():
            for param in module.model.parameters():
                if param.requires_grad:
                    param.add_(0.01 * torch.randn_like(param))
        output, _ = module.compute_loss(batch, "train")
        return output.losses.sum()

    assert_same_loss_and_grads(loss_of, *twins(make, CHUNKED["7"]))


def test_dpo_precomputed_reference_is_the_same_with_either_path(tmp_path, tiny_spec):
    data, _ = pair_batch(tmp_path, tiny_spec)
    references = []
    for compute in (CHUNKED["7"], FULL):
        torch.manual_seed(0)
        module = DPOModule(tiny_spec, peft=LoRA(r=4), gradient_checkpointing=False, reference="precomputed",
                           compute=compute)  # fmt: skip
        module.configure_model()
        references.append(_precompute(module, data))
    torch.testing.assert_close(references[0], references[1], rtol=1e-5, atol=1e-5)


def _precompute(module, data):
    values = []
    with torch.no_grad():
        for batch in data.ordered_dataloader("train"):
            reference = module.live_reference_logps(batch)
            values.append(torch.stack([reference.chosen, reference.rejected], dim=1))
    return torch.cat(values)


def test_kto_same_loss_and_gradients(tmp_path, tiny_spec):
    from lightft import PreferenceDataModule

    rows = [{"prompt": f"Q{i}: fruit?", "completion": " apple banana" if i % 2 else " zebra", "label": bool(i % 2)}
            for i in range(8)]  # fmt: skip
    data = PreferenceDataModule(train=DatasetSpec(str(write_jsonl(tmp_path / "kto.jsonl", rows))), tokenizer=tiny_spec,
                                max_length=48, batch_size=4)  # fmt: skip
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))

    def make(compute):
        return DPOModule(tiny_spec, peft=LoRA(r=4, dropout=0.0), gradient_checkpointing=False, loss=KTOLoss(),
                         compute=compute)  # fmt: skip

    assert_same_loss_and_grads(lambda m: m.compute_loss(batch, "train")[0].losses.sum(), *twins(make, CHUNKED["7"]))


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_ppo_grpo_same_logprobs_entropy_values_and_gradients(tiny_spec, algorithm):
    prompts = PromptDataModule(train=DatasetSpec(str(QUICKSTART / "train.jsonl"), max_examples=8),
                               tokenizer=tiny_spec, max_prompt_length=32, batch_size=4)  # fmt: skip
    prompts.setup("fit")
    batch = next(iter(prompts.train_dataloader()))

    def make(compute):
        return PPOModule(
            tiny_spec,
            reward=KeywordReward("e"),
            peft=LoRA(r=4, dropout=0.0, target_modules=["q_proj", "v_proj", "lm_head"]),
            gradient_checkpointing=False,
            generation=GenerationSettings(max_new_tokens=8, do_sample=True),
            algorithm=algorithm,
            samples_per_prompt=2 if algorithm == "grpo" else 1,
            ppo=PPOSettings(mini_batch_size=4),
            compute=compute,
        )

    chunked, full = twins(make, CHUNKED["7"])
    torch.manual_seed(0)
    rollout = sample(chunked.model, chunked.tokenizer, batch, chunked.generation, chunked.samples_per_prompt)
    with_values = algorithm == "ppo"
    with torch.no_grad():
        old = [m.evaluate(rollout, with_values, with_entropy=True) for m in (chunked, full)]
    torch.testing.assert_close(old[0].logprobs, old[1].logprobs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(old[0].entropy, old[1].entropy, rtol=1e-5, atol=1e-5)
    mask = rollout.response_mask
    assert (old[0].logprobs[~mask] == 0).all() and (old[0].logprobs[mask] < 0).all()

    def loss_of(module):
        new = module.evaluate(rollout, with_values)
        advantages = torch.linspace(-1, 1, mask.numel()).reshape(mask.shape)
        returns = advantages if with_values else None
        values = old[1].values if with_values else None
        out = module.loss(new.logprobs, old[1].logprobs, advantages, new.values, values, returns, mask)
        return out["loss"]

    assert_same_loss_and_grads(loss_of, chunked, full)


def test_only_trained_positions_reach_the_output_layer(tiny_spec, tokenizer):
    model = load_model(tiny_spec, tokenizer)
    seen = []
    model.lm_head.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[:-1].numel()))
    ids = torch.arange(3, 23).reshape(2, 10)
    labels = ids.clone()
    labels[:, :6] = -100  # a 6-token prompt: positions 0-4 predict prompt tokens
    output = token_logps(model, ids, labels, settings=ComputeSettings(loss_chunk_size=3))
    assert sum(seen) == 2 * 4  # 4 completion tokens per row, each predicted by one position; nothing else
    assert output.logps.mask.sum() == 8 and output.hidden is None


def test_hidden_states_are_the_models_own_and_the_head_gives_its_logits(tiny_spec, tokenizer):
    model = load_model(tiny_spec, tokenizer).eval()
    ids = torch.arange(3, 15).reshape(2, 6)
    with torch.no_grad():
        expected = model(input_ids=ids, output_hidden_states=True)
        hidden = hidden_states(model, ids)
        torch.testing.assert_close(hidden, expected.hidden_states[-1])
        torch.testing.assert_close(OutputHead(model)(hidden), expected.logits)
    assert check_output_head(model, torch.device("cpu"))


def test_a_head_that_differs_from_the_model_falls_back_to_full_logits(tiny_spec):
    module = sft_module(tiny_spec, LoRA(r=4, dropout=0.0), ComputeSettings())
    module.configure_model()
    module.model.get_base_model().logit_scale = 2.0  # a scaling this model's own forward does not apply
    batch = sft_batch(tiny_spec)
    with pytest.warns(UserWarning, match="chunked_loss: false"):
        module.token_loss(batch)
    assert module.compute.chunked_loss is False
