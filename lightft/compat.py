"""Config-time compatibility checks: combinations that cannot work fail before any weight is loaded.

Run by the CLI right after the config is parsed (before data is tokenized) and again by `LightFTModule.setup` for
runs built in Python. Each error names the key to change. The PEFT strategy's own `check` runs on a meta-device
copy of the model (all modules and shapes, no weights), so target modules are validated in milliseconds.
"""

from __future__ import annotations

from typing import Any

import torch

from lightft.errors import LightFTError
from lightft.models.kernels import check_liger
from lightft.models.loading import meta_model
from lightft.peft.base import capability

STRATEGY_KEY = "trainer.strategy"
GPU_ONLY = ("fsdp",)


def strategy_conflict(
    method: Any, peft: Any, kind: str, stage: int | None, accelerator: str, precision: str | None
) -> str | None:
    """Why a method x PEFT x strategy x accelerator combination cannot run (the message names the fix), or None.

    `method` is the module's `describe()` (`lightft.modules.Method`); `kind` is `lightft.strategies.strategy_kind`'s
    answer; `stage` the ZeRO stage under DeepSpeed.
    """
    name = type(peft).__name__
    quantized = peft.quantization_config(torch.float32) if hasattr(peft, "quantization_config") else None
    if kind in GPU_ONLY and accelerator == "cpu":
        return (
            f"{STRATEGY_KEY}: {kind} runs on GPUs only; on CPU use lightft.strategies.FSDP2, DDP or DeepSpeed "
            "(configs/trainer/fsdp2.yaml, ddp.yaml)."
        )
    if quantized is not None and quantized.load_in_8bit and (kind in ("fsdp", "fsdp2") or stage == 3):
        return (
            f"model.init_args.peft: {name}'s 8-bit (LLM.int8) base weights cannot be sharded by {kind}; use "
            "lightft.peft.QLoRA, or DDP / DeepSpeed stage 1-2."
        )
    if quantized is not None and quantized.load_in_4bit and stage == 3:
        return (
            f"model.init_args.peft: {name}'s 4-bit base weights cannot be partitioned by DeepSpeed ZeRO-3 (zero.Init "
            "cannot shard bitsandbytes layers); use stage: 2, or lightft.strategies.FSDP2 (configs/trainer/fsdp2.yaml)."
        )
    if quantized is not None and quantized.load_in_4bit and kind == "fsdp":
        compute = _precision_dtype(precision) if peft.compute_dtype == "auto" else peft.compute_dtype
        if peft.quant_storage != compute:
            return (
                f"model.init_args.peft.init_args.quant_storage: FSDP flattens each unit into one tensor, so the 4-bit "
                f"weights must be stored in the compute dtype; set quant_storage: {compute}."
            )
    if method.rollout and stage == 3:
        return (
            f"{STRATEGY_KEY}: PPO/GRPO generation under DeepSpeed ZeRO-3 is not supported; use stage: 2 or "
            "lightft.strategies.FSDP2, which gathers the weights once per rollout."
        )
    return None


def _precision_dtype(precision: str | None) -> str:
    precision = str(precision or "32-true")
    return "bfloat16" if precision.startswith("bf16") else "float16" if precision.startswith("16") else "float32"


def check_strategy(module: Any, trainer: Any) -> None:
    """The strategy part of the checks, from an instantiated (not yet set up) trainer."""
    from lightft.strategies import strategy_kind, zero_stage

    strategy = trainer.strategy
    kind = strategy_kind(strategy)
    stage = zero_stage(strategy) if kind == "deepspeed" else None
    accelerator = "cpu" if type(trainer.accelerator).__name__ == "CPUAccelerator" else "gpu"
    message = strategy_conflict(module.describe(), module.peft, kind, stage, accelerator, str(trainer.precision))
    if message:
        raise LightFTError(message)
    if getattr(getattr(module, "compute", None), "kernels", "torch") == "liger":
        model_type = meta_model(module.model_spec, key="model.init_args.model.path").config.model_type
        check_liger(model_type, accelerator)


def check_compatibility(module: Any, datamodule: Any = None, trainer: Any = None) -> None:
    """Raise `LightFTError` for a method x PEFT x data x checkpointing x strategy combination that cannot train."""
    peft = module.peft
    name = type(peft).__name__
    if trainer is not None:
        check_strategy(module, trainer)
    check_data = getattr(module, "check_datamodule", None)
    if check_data is not None:
        check_data(datamodule)
    if getattr(datamodule, "packing", False) and capability(peft, "prompt_style"):
        raise LightFTError(
            f"data.init_args.packing: {name} prepends virtual tokens, which packed rows (positions restarting per "
            "document) cannot carry; set packing: false or use a LoRA-family strategy."
        )
    if module.gradient_checkpointing and not capability(peft, "supports_gradient_checkpointing"):
        raise LightFTError(
            f"model.init_args.gradient_checkpointing: {name} does not work with activation checkpointing; set "
            "gradient_checkpointing: false."
        )
    check = getattr(peft, "check", None)
    qat = getattr(module, "qat", None)
    if check is None and qat is None:
        return
    meta = meta_model(module.model_spec, key="model.init_args.model.path", head=module.describe().head)
    if check is not None:
        check(meta)
    if qat is not None:  # quantization-aware training: the scheme, the PEFT strategy, the group size
        from lightft.quantization.qat import check as check_qat

        check_qat(qat, peft, model=meta)


# ---- docs/compatibility.md ----------------------------------------------------------------------------------------

STRATEGY_COLUMNS = [
    ("DDP", "ddp", None), ("FSDP", "fsdp", None), ("FSDP2", "fsdp2", None),
    ("ZeRO-1", "deepspeed", 1), ("ZeRO-2", "deepspeed", 2), ("ZeRO-3", "deepspeed", 3),
]  # fmt: skip


def _peft_rows() -> list[tuple[str, Any]]:
    from lightft import peft

    return [
        ("LoRA / rsLoRA / DoRA", peft.LoRA()),
        ("QLoRA (quant_storage auto)", peft.QLoRA()),
        ("QLoRA (quant_storage: bfloat16)", peft.QLoRA(quant_storage="bfloat16")),
        ("LoRA8bit", peft.LoRA8bit()),
        ("IA3", peft.IA3()),
        ("PromptTuning / PTuning / PrefixTuning", peft.PromptTuning()),
        ("BottleneckAdapter", peft.BottleneckAdapter()),
        ("FullFineTune", peft.FullFineTune()),
    ]


def compatibility_markdown(methods: dict[str, Any]) -> str:
    """The compatibility matrix as markdown, computed by `strategy_conflict` (GPU, bf16-mixed).

    Args:
        methods: Each method's name and declaration (`{"SFTModule": SFTModule.method, ...}`); the first is the one
            the PEFT x strategy table is computed for.
    """
    notes: list[str] = []
    first = next(iter(methods.values()))

    def cell(method: Any, peft: Any, kind: str, stage: int | None) -> str:
        message = strategy_conflict(method, peft, kind, stage, "gpu", "bf16-mixed")
        if message is None:
            return "yes"
        if message not in notes:
            notes.append(message)
        return f"no [{notes.index(message) + 1}]"

    header = "| | " + " | ".join(c[0] for c in STRATEGY_COLUMNS) + " |\n|---|" + "---|" * len(STRATEGY_COLUMNS)
    lines = [
        "# Compatibility",
        "",
        "Generated by `python docs/make_compatibility.py` from the checks lightft runs at config time",
        "(`lightft/compat.py`): a combination marked *no* fails before any weight loads, with the message below.",
        "On CPU, DDP, FSDP2 and DeepSpeed (its CPU accelerator) run; FSDP (v1) needs GPUs. DDP and FSDP2 are tested",
        "with 2 CPU processes for SFT, reward models, DPO (live and precomputed reference), PPO and GRPO, FSDP2 also",
        "with QLoRA, and DeepSpeed ZeRO-2/3 for SFT and ZeRO-3 for DPO",
        "(`tests/test_distributed.py`, `tests/test_sharded.py`); IA3, prompt/prefix tuning, the bottleneck adapter",
        "and full fine-tuning (DPO with its frozen reference copy) were run under FSDP2 on 2 CPU processes too, and",
        "LoRA8bit under FSDP2 fails",
        "(bitsandbytes' 8-bit weights lose their state when gathered), hence *no*. GPU cells are what the checks",
        "allow; GPU runs are recorded in",
        "`docs/benchmarks.md` when a session has a GPU.",
        "",
        "## PEFT strategy × distributed strategy (any method but PPO/GRPO)",
        "",
        header,
    ]
    for label, peft in _peft_rows():
        lines.append(f"| {label} | " + " | ".join(cell(first, peft, k, s) for _, k, s in STRATEGY_COLUMNS) + " |")
    lines += ["", "## Method × distributed strategy (LoRA)", "", header]
    lora = _peft_rows()[0][1]
    for name, method in methods.items():
        row = " | ".join(cell(method, lora, k, s) for _, k, s in STRATEGY_COLUMNS)
        lines.append(f"| {name} | {row} |")
    lines += ["", "## Why not", ""]
    lines += [f"{i}. {message}" for i, message in enumerate(notes, 1)]
    lines += [
        "",
        "## Other checks",
        "",
        f"- FSDP (v1) on `accelerator: cpu` fails with: {strategy_conflict(first, lora, 'fsdp', None, 'cpu', None)}",
        "- Prompt-style strategies (virtual tokens) refuse `packing: true`; strategies that cannot recompute",
        "  activations refuse `gradient_checkpointing: true`; each PEFT strategy checks its target modules on a",
        "  meta-device copy of the model; methods check their data module (e.g. PPO needs `PromptDataModule`).",
        "- `qat:` (quantization-aware training, any method) refuses a quantized base (QLoRA, LoRA8bit: fake",
        "  quantization needs the float weights), schemes torchao cannot fake-quantize (`int8_static`, NF4/FP4,",
        "  LLM.int8), affine or per-tensor weights, and a group size that does not divide a quantized layer.",
    ]
    return "\n".join(lines) + "\n"
