"""LoRA and its quantized variants through `peft`: low-rank updates of chosen linear layers.

LoRA: W x + (alpha / r) * B A x, with A (r x in) and B (out x r); rsLoRA scales by alpha / sqrt(r); DoRA (`dora`)
also learns a per-column magnitude. QLoRA is LoRA over NF4/FP4 weights, LoRA8bit over LLM.int8 weights
(bitsandbytes), de-quantized on the fly.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from peft import LoraConfig
from torch import nn
from transformers import BitsAndBytesConfig, PreTrainedModel

from lightft.errors import LightFTError
from lightft.peft.dropout import fuse_lora_dropout
from lightft.peft.library import PeftLibraryStrategy
from lightft.peft.targets import resolve_targets

DTypeName = Literal["auto", "float32", "bfloat16", "float16"]


class LoRA(PeftLibraryStrategy):
    """Low-rank adapters (peft `LoraConfig`).

    Args:
        r: Rank of the update.
        alpha: Scale numerator (`lora_alpha`); the update is scaled by alpha / r (alpha / sqrt(r) with rslora).
        dropout: Dropout on the adapter input.
        target_modules: `all-linear` (every linear layer but the output head), a preset (`attention`, `mlp`,
            `attention+mlp`), a list of module names such as `[q_proj, v_proj]`, or a regular expression over full
            module names.
        rslora: Rank-stabilised scaling alpha / sqrt(r).
        dora: Weight-decomposed LoRA (DoRA): also learn a magnitude vector per output column.
        bias: Which biases train: `none`, `all` or `lora_only`.
        modules_to_save: Extra modules trained in full and saved with the adapter (e.g. `[lm_head]`).
    """

    def __init__(
        self,
        r: int = 8,
        alpha: int = 16,
        dropout: float = 0.05,
        target_modules: str | list[str] = "all-linear",
        rslora: bool = False,
        dora: bool = False,
        bias: Literal["none", "all", "lora_only"] = "none",
        modules_to_save: list[str] | None = None,
    ) -> None:
        if r < 1:
            raise LightFTError(f"model.init_args.peft.init_args.r: rank must be >= 1, got {r}.")
        if not 0.0 <= dropout < 1.0:
            raise LightFTError(f"model.init_args.peft.init_args.dropout: must be in [0, 1), got {dropout}.")
        self.r, self.alpha, self.dropout = r, alpha, dropout
        self.target_modules = target_modules
        self.rslora, self.dora, self.bias = rslora, dora, bias
        self.modules_to_save = modules_to_save

    def apply(self, model: PreTrainedModel) -> nn.Module:
        """The model with peft's LoRA, each adapter's input dropout fused into its A projection (`peft/dropout.py`)."""
        wrapped = super().apply(model)
        fuse_lora_dropout(wrapped)
        return wrapped

    def peft_config(self, model: nn.Module) -> LoraConfig:
        """The equivalent `peft.LoraConfig`, targets resolved against `model`."""
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=resolve_targets(model, self.target_modules),
            use_rslora=self.rslora,
            use_dora=self.dora,
            bias=self.bias,
            modules_to_save=self.modules_to_save,
            task_type="CAUSAL_LM",
        )


class QLoRA(LoRA):
    """LoRA over a 4-bit quantized base (bitsandbytes NF4/FP4), as in Dettmers et al. 2023.

    Args:
        quant_type: `nf4` (normal-float, best for normally distributed weights) or `fp4`.
        double_quant: Quantize the quantization constants too (saves ~0.4 bit per parameter).
        compute_dtype: Dtype of the de-quantized matmuls; `auto` follows the trainer precision.
        quant_storage: Dtype the packed 4-bit weights are stored in; set it to the compute dtype to shard them with
            FSDP. `auto` keeps bitsandbytes' uint8.
        **lora: The LoRA arguments (r, alpha, dropout, target_modules, rslora, dora, bias, modules_to_save).
    """

    def __init__(
        self,
        quant_type: Literal["nf4", "fp4"] = "nf4",
        double_quant: bool = True,
        compute_dtype: DTypeName = "auto",
        quant_storage: DTypeName = "auto",
        **lora: Any,
    ) -> None:
        super().__init__(**lora)
        self.quant_type, self.double_quant = quant_type, double_quant
        self.compute_dtype, self.quant_storage = compute_dtype, quant_storage

    def quantization_config(self, compute_dtype: torch.dtype) -> BitsAndBytesConfig | None:
        """4-bit bitsandbytes config; `compute_dtype` is the trainer's when this strategy says `auto`."""
        compute = compute_dtype if self.compute_dtype == "auto" else getattr(torch, self.compute_dtype)
        storage = torch.uint8 if self.quant_storage == "auto" else getattr(torch, self.quant_storage)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.quant_type,
            bnb_4bit_use_double_quant=self.double_quant,
            bnb_4bit_compute_dtype=compute,
            bnb_4bit_quant_storage=storage,
        )


class LoRA8bit(LoRA):
    """LoRA over an 8-bit quantized base (bitsandbytes LLM.int8, Dettmers et al. 2022).

    Args:
        threshold: Outlier threshold of LLM.int8: input features above it stay in 16-bit (6.0 in the paper).
        **lora: The LoRA arguments (r, alpha, dropout, target_modules, rslora, dora, bias, modules_to_save).
    """

    def __init__(self, threshold: float = 6.0, **lora: Any) -> None:
        super().__init__(**lora)
        self.threshold = threshold

    def quantization_config(self, compute_dtype: torch.dtype) -> BitsAndBytesConfig | None:
        """8-bit bitsandbytes config."""
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=self.threshold)
