"""`lightft estimate --config X.yaml`: peak memory per rank before launch, from the config alone (no weights load).

Reads the same configs as `lightft fit` (recipe + trainer overlays), builds the model on the meta device and prints
`lightft.memory`'s breakdown; `--json` for machines; `--gpu_memory` names the cheapest settings that fit.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import replace
from typing import Any

import torch
from jsonargparse.typing import PositiveFloat, PositiveInt

from lightft.memory import GIB, Estimate, Plan, estimate
from lightft.models.forward import ComputeSettings


def parse_fit_args(args: list[str]) -> tuple[Any, Any, dict[str, Any]]:
    """A `lightft fit` command line -> (module, data module, trainer arguments); no Trainer, nothing loaded."""
    from lightft.commands.fit import parse_fit_args as parse

    return parse(args)


def plan_and_model(args: list[str]) -> tuple[Plan, Any, Any]:
    """Parse a `lightft fit` command line into a Plan, the PEFT-wrapped meta-device model and its quantization."""
    return plan_for(*parse_fit_args(args))


def plan_for(module: Any, data: Any, trainer: dict[str, Any]) -> tuple[Plan, Any, Any]:
    """The Plan of a parsed run, the PEFT-wrapped meta-device model and its quantization."""
    from lightft.models.loading import meta_model, torch_dtype
    from lightft.peft.base import apply_seeded
    from lightft.strategies import strategy_kind, zero_stage

    strategy = trainer.get("strategy")
    kind = strategy_kind(strategy) if not isinstance(strategy, str) else _named_kind(strategy)
    stage = zero_stage(strategy) if kind == "deepspeed" and not isinstance(strategy, str) else 0
    ds_zero = strategy.config.get("zero_optimization", {}) if stage else {}
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1) or 1
    devices = len(devices) if isinstance(devices, list) else devices
    notes = ["activations assume every row is max_length tokens long (the worst case; packing's usual case)"]
    if devices in ("auto", -1, "-1", None):
        devices = 1
        notes.append("trainer.devices is auto: estimated for 1 device per node (give --devices N)")
    precision = str(trainer.get("precision") or "32-true")
    compute = getattr(module, "compute", ComputeSettings())
    if not compute.chunked_loss:
        notes.append("compute.chunked_loss is false: the loss builds the (tokens x vocabulary) logits")
    accelerator = str(trainer.get("accelerator") or "auto")
    method = module.describe()
    rows = getattr(data, "rows_per_micro_batch", getattr(data, "batch_size", 1))  # `batch_size_unit: tokens`: rows
    shape = module.memory_plan(int(rows), int(getattr(data, "max_length", 512)), notes)
    plan = Plan(
        method=type(module).__name__,
        rows_per_example=method.rows_per_example,
        lm_logps=method.lm_logps,
        reference_copy=method.reference == "frozen_copy",
        precision=precision,
        gradient_checkpointing=bool(module.gradient_checkpointing),
        optimizer=module.optimizer_config.name,
        strategy="single" if kind == "single" and int(devices) * int(nodes) == 1 else kind,
        zero_stage=stage,
        offload_optimizer=ds_zero.get("offload_optimizer", {}).get("device", "none") == "cpu",
        offload_parameters=ds_zero.get("offload_param", {}).get("device", "none") == "cpu",
        world_size=int(devices) * int(nodes),
        accelerator="gpu"
        if accelerator in ("gpu", "cuda") or accelerator == "auto" and torch.cuda.is_available()
        else "cpu",
        chunked_loss=compute.chunked_loss,
        loss_chunk_size=compute.loss_chunk_size,
        activation_offloading=compute.activation_offloading,
        notes=notes,
        **shape,
    )
    dtype = torch_dtype(module.model_spec, precision)
    quantization = module.peft.quantization_config(dtype) if hasattr(module.peft, "quantization_config") else None
    model = meta_model(module.model_spec, key="model.init_args.model.path", head=method.head).to(dtype)
    if getattr(module, "qat", None) is not None:  # the trace then counts what the fake quantizers save for backward
        from lightft.quantization.qat import prepare

        prepare(model, module.qat)
        notes.append(f"qat: {module.qat.label()} (fake-quantized weights and inputs saved for backward)")
    model = apply_seeded(module.peft, model)
    if precision.endswith("-true") and dtype != torch.float32:
        model = model.to(dtype)  # Lightning's `*-true` precision casts every weight, adapters included, at setup
    return plan, model, quantization


def _named_kind(name: str) -> str:
    name = name.lower()
    for kind in ("fsdp2", "fsdp", "deepspeed", "ddp"):
        if name.startswith(kind):
            return kind
    return "single"


def suggest(plan: Plan, model: Any, quantization: Any, gpu_memory_gib: float) -> list[tuple[str, Estimate]]:
    """Cheaper variants of `plan` that fit `gpu_memory_gib` per GPU, cheapest change first."""
    variants = [
        ("as configured", plan),
        ("gradient checkpointing on", replace(plan, gradient_checkpointing=True)),
        ("8-bit AdamW", replace(plan, optimizer="adamw_8bit")),
        ("gradient checkpointing + 8-bit AdamW", replace(plan, gradient_checkpointing=True, optimizer="adamw_8bit")),
    ]
    if plan.world_size > 1:
        for label, kind, stage in (("FSDP2", "fsdp2", 0), ("DeepSpeed ZeRO-2", "deepspeed", 2),
                                   ("DeepSpeed ZeRO-3", "deepspeed", 3)):  # fmt: skip
            variants.append((f"{label} + gradient checkpointing", replace(plan, strategy=kind, zero_stage=stage,
                                                                           gradient_checkpointing=True)))  # fmt: skip
    half = replace(plan, gradient_checkpointing=True, batch_size=max(1, plan.batch_size // 2))
    variants.append(("half the batch, gradient checkpointing", half))
    fits = []
    for label, variant in variants:
        result = estimate(model, variant, quantization)
        if result.total <= gpu_memory_gib * GIB:
            fits.append((label, result))
    return fits


def add_arguments(parser: Any) -> None:
    """`lightft estimate`'s own options, beside `lightft fit`'s."""
    parser.add_argument(
        "--json", type=bool, nargs="?", const=True, default=False, help="Print JSON (for machines), not the table."
    )
    parser.add_argument(
        "--gpu_memory",
        type=PositiveFloat | None,
        default=None,
        help="GiB per GPU: also name the cheapest settings whose estimate fits (exit status 1 if none does).",
    )
    parser.add_argument(
        "--devices",
        type=PositiveInt | None,
        default=None,
        help="Devices per node, overriding trainer.devices (give it when that is auto).",
    )
    parser.add_argument("--num_nodes", type=PositiveInt | None, default=None, help="Overrides trainer.num_nodes.")


def main(args: list[str]) -> None:
    """`lightft estimate [--config X.yaml ...] [--devices N] [--num_nodes M] [--json] [--gpu_memory GiB]`."""
    from lightft.commands.fit import ParseOnlyCLI

    if any(word in ("-h", "--help") for word in args):
        ParseOnlyCLI(args, "estimate", add_arguments, __doc__)  # prints the help and exits
    with contextlib.redirect_stdout(sys.stderr):  # libraries' chatter (DeepSpeed's accelerator line): stdout is ours
        cli = ParseOnlyCLI(args, "estimate", add_arguments, __doc__)
        options, trainer = cli.config, cli.config_init["trainer"]
        for key in ("devices", "num_nodes"):
            if options[key] is not None:
                trainer[key] = options[key]
        plan, model, quantization = plan_for(cli.model, cli.datamodule, trainer)
    result = estimate(model, plan, quantization)
    print(result.to_json() if options.json else result.table())
    gpu_memory = options.gpu_memory
    if gpu_memory is not None and not options.json:
        fits = suggest(plan, model, quantization, gpu_memory)
        print(f"\nWithin {gpu_memory:g} GiB per GPU:")
        if not fits:
            print("  nothing tried fits: use QLoRA (lightft.peft.QLoRA), more GPUs, or a shorter max_length.")
        for label, fit in fits[:3]:
            print(f"  {label}: {fit.total / GIB:.2f} GiB")
        if not fits:
            sys.exit(1)
