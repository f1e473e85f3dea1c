"""CUDA speed-ups: Liger kernels, flash-attention by `auto`, activation offloading, bf16 end to end.

On CPU: the choices `auto` makes and the one-line refusals. GPU-marked (skipped without CUDA; `pytest -m gpu`): Liger's
kernels and fused loss give the torch path's loss and gradients, flash-attention keeps packed documents apart,
offloading lowers the peak without changing gradients, and a bf16 run trains, generates and predicts in bf16.
"""

from __future__ import annotations

import pytest
import torch

from lightft import SFTModule
from lightft.data.batches import TokenBatch
from lightft.errors import LightFTError
from lightft.models.forward import ComputeSettings
from lightft.models.kernels import check_liger, resolve_attention
from lightft.models.loading import ModelSpec, resolve_device
from lightft.models.offload import OffloadActivations
from lightft.peft import LoRA
from tests.conftest import TINY
from tests.models.test_forward import assert_same_loss_and_grads, sft_batch, twins

CUDA = torch.cuda.is_available()
gpu = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs CUDA")]


def test_auto_attention_is_sdpa_without_flash_attention_or_in_float32():
    assert resolve_attention("auto", torch.float32) == "sdpa"
    assert resolve_attention("eager", torch.bfloat16) == "eager" and resolve_attention(None, torch.float32) is None
    if not CUDA:
        assert resolve_attention("auto", torch.bfloat16) == "sdpa"


def test_auto_device_is_cpu_float32_here_and_cuda_cannot_be_forced():
    if CUDA:
        assert resolve_device() == (torch.device("cuda"), torch.bfloat16)
        return
    assert resolve_device() == (torch.device("cpu"), torch.float32)
    assert resolve_device("cpu", "bfloat16") == (torch.device("cpu"), torch.bfloat16)
    with pytest.raises(LightFTError, match="--device: 'cuda'.*no CUDA GPU"):
        resolve_device("cuda")


def test_liger_is_refused_with_the_key_and_the_fix():
    with pytest.raises(LightFTError, match=r"compute.kernels: .*CUDA GPUs.*set kernels: torch"):
        check_liger("llama", "cpu")
    if CUDA:
        with pytest.raises(LightFTError, match="no kernels for model type 'gpt2'"):
            check_liger("gpt2", "gpu")


def test_offloading_moves_nothing_on_cpu():
    x = torch.randn(512, 1024, requires_grad=True)  # 2 MiB: above the threshold, but on the CPU already
    hooks = OffloadActivations()
    with hooks:
        y = (x * x).sum()
    y.backward()
    assert hooks.offloaded == 0 and torch.equal(x.grad, 2 * x)


# ---- GPU --------------------------------------------------------------------------------------------------------


def cuda_spec(**kwargs) -> ModelSpec:
    return ModelSpec(str(TINY), random_init=True, seed=0, **kwargs)


@pytest.mark.parametrize("compute", [ComputeSettings(kernels="liger"), ComputeSettings(activation_offloading=True)],
                         ids=["liger", "offloading"])  # fmt: skip
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_compute_settings_give_the_torch_paths_loss_and_gradients(compute):
    spec = cuda_spec()
    batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in sft_batch(spec).items()}

    def make(settings):
        return SFTModule(spec, peft=LoRA(r=4, dropout=0.0), gradient_checkpointing=True, compute=settings)

    chunked, full = twins(make, compute)  # against the full logits of the plain torch model, fp32
    for module in (chunked, full):
        module.cuda().train()
    assert_same_loss_and_grads(lambda m: m.token_loss(batch)[0], chunked, full, tolerance=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_offloading_lowers_the_peak_of_a_checkpointed_forward():
    spec = cuda_spec(dtype="bfloat16")
    peaks = {}
    for offload in (False, True):
        module = SFTModule(spec, peft=LoRA(r=4, dropout=0.0), gradient_checkpointing=True,
                           compute=ComputeSettings(activation_offloading=offload))  # fmt: skip
        module.configure_model()
        module.cuda().train()
        ids = torch.randint(0, 500, (8, 512), device="cuda")
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        loss = module.token_loss(TokenBatch(input_ids=ids, labels=ids))[0]
        peaks[offload] = torch.cuda.max_memory_allocated() - before
        loss.backward()
    assert peaks[True] < peaks[False]


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_flash_attention_auto_keeps_packed_documents_apart():
    pytest.importorskip("flash_attn")
    from lightft.models.attention import check_packed_attention
    from lightft.models.loading import load_model, load_tokenizer

    spec = cuda_spec(dtype="bfloat16")
    model = load_model(spec, load_tokenizer(spec)).cuda()
    assert model.config._attn_implementation == "flash_attention_2"
    check_packed_attention(model, torch.device("cuda"))
