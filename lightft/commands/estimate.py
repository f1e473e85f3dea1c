"""`lightft estimate --config X.yaml`: peak memory per rank before launch, from the config alone (no weights load).

Reads the same configs as `lightft fit` (recipe + trainer overlays), builds the model on the meta device and prints
`lightft.memory`'s breakdown; `--json` for machines; `--gpu_memory` names the cheapest settings that fit.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import replace
from typing import Any

import torch

from lightft.errors import LightFTError
from lightft.memory import GIB, Estimate, Plan, estimate
from lightft.models.forward import ComputeSettings


def parse_fit_args(args: list[str]) -> tuple[Any, Any, dict[str, Any]]:
    """A `lightft fit` command line -> (module, data module, trainer arguments); no Trainer, nothing loaded."""
    from lightft.cli import check_config_files

    check_config_files(args)
    with warnings.catch_warnings():  # `args` given while sys.argv also holds them: intended here
        warnings.filterwarnings("ignore", message=".*args parameter is intended")
        cli = _parse_only_cli()(args=args, run=False)
    return cli.model, cli.datamodule, cli.config_init["trainer"]


def plan_and_model(args: list[str]) -> tuple[Plan, Any, Any]:
    """Parse a `lightft fit` command line into a Plan, the PEFT-wrapped meta-device model and its quantization."""
    return plan_for(*parse_fit_args(args))


def plan_for(module: Any, data: Any, trainer: dict[str, Any]) -> tuple[Plan, Any, Any]:
    """The Plan of a parsed run, the PEFT-wrapped meta-device model and its quantization."""
    from lightft.models.loading import meta_model, torch_dtype
    from lightft.modules.base import apply_seeded
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
    method = _method(module)
    rows = getattr(data, "rows_per_micro_batch", getattr(data, "batch_size", 1))  # `batch_size_unit: tokens`: rows
    batch, seq_len = int(rows), int(getattr(data, "max_length", 512))
    ppo: dict[str, Any] = {}
    if method == "PPOModule":
        seq_len += int(module.generation.max_new_tokens or 0)
        rollout = batch * module.samples_per_prompt
        ppo = {"rollout_rows": rollout, "critic": module.algorithm == "ppo"}
        ppo["reward_model_bytes"] = reward_model_bytes(module.reward, notes)
        batch = min(rollout, module.ppo.mini_batch_size)
        notes.append(f"PPO: rollouts of {rollout} sequences of prompt + max_new_tokens; updates of {batch}")
    plan = Plan(
        method=method,
        batch_size=batch,
        seq_len=seq_len,
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
        reference=getattr(module, "reference", None),
        chunked_loss=compute.chunked_loss,
        loss_chunk_size=compute.loss_chunk_size,
        activation_offloading=compute.activation_offloading,
        notes=notes,
        **ppo,
    )
    dtype = torch_dtype(module.model_spec, precision)
    quantization = module.peft.quantization_config(dtype) if hasattr(module.peft, "quantization_config") else None
    model = meta_model(module.model_spec, key="model.init_args.model.path", head=module.model_head).to(dtype)
    model = apply_seeded(module.peft, model)
    if precision.endswith("-true") and dtype != torch.float32:
        model = model.to(dtype)  # Lightning's `*-true` precision casts every weight, adapters included, at setup
    return plan, model, quantization


def reward_model_bytes(reward: Any, notes: list[str]) -> float:
    """Weights of the reward model a `RewardModelScorer` loads (at its config's dtype); 0 for rule rewards."""
    from lightft.models.loading import ModelSpec, meta_model
    from lightft.rl.rewards import RewardModelScorer

    if not isinstance(reward, RewardModelScorer):
        return 0.0
    model = meta_model(ModelSpec(path=reward.path), key="model.init_args.reward.init_args.path", head="reward")
    dtype = getattr(model.config, "dtype", None) or torch.float32
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    notes.append(f"PPO: the reward model {reward.path} at {str(dtype).removeprefix('torch.')}")
    return float(sum(p.numel() for p in model.parameters()) * dtype.itemsize)


def _named_kind(name: str) -> str:
    name = name.lower()
    for kind in ("fsdp2", "fsdp", "deepspeed", "ddp"):
        if name.startswith(kind):
            return kind
    return "single"


def _method(module: Any) -> str:
    from lightft import DPOModule, PPOModule, RewardModelModule

    for cls in (DPOModule, PPOModule, RewardModelModule):
        if isinstance(module, cls):
            return cls.__name__
    return "SFTModule"


def _parse_only_cli() -> type:
    from lightft.cli import LightFTCLI

    class ParseOnly(LightFTCLI):
        """Parses and instantiates the module, data module and strategy; no Trainer, no checks needing one."""

        def instantiate_classes(self) -> None:
            self.config_init = self.parser.instantiate_classes(self.config)
            self.datamodule = self._get(self.config_init, "data")
            self.model = self._get(self.config_init, "model")

        def after_instantiate_classes(self) -> None:
            return None

    return ParseOnly


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


def main(args: list[str]) -> None:
    """`lightft estimate [--config X.yaml ...] [--devices N] [--num_nodes M] [--json] [--gpu_memory GiB]`."""
    args = list(args)
    as_json = "--json" in args
    args = [a for a in args if a != "--json"]
    gpu_memory = take_option(args, "--gpu_memory", float)
    devices = take_option(args, "--devices", int)
    nodes = take_option(args, "--num_nodes", int)
    if devices is not None:
        args += ["--trainer.devices", str(devices)]
    if nodes is not None:
        args += ["--trainer.num_nodes", str(nodes)]
    if not any(a in ("--config", "-c") for a in args):
        raise LightFTError("--config: give the run's config: lightft estimate --config configs/<method>/<recipe>.yaml")
    plan, model, quantization = plan_and_model(args)
    result = estimate(model, plan, quantization)
    print(result.to_json() if as_json else result.table())
    if gpu_memory is not None and not as_json:
        fits = suggest(plan, model, quantization, gpu_memory)
        print(f"\nWithin {gpu_memory:g} GiB per GPU:")
        if not fits:
            print("  nothing tried fits: use QLoRA (lightft.peft.QLoRA), more GPUs, or a shorter max_length.")
        for label, fit in fits[:3]:
            print(f"  {label}: {fit.total / GIB:.2f} GiB")
        if not fits:
            sys.exit(1)


def take_option(args: list[str], name: str, kind: type = str, default: Any = None) -> Any:
    """Remove `name VALUE` (or `name=VALUE`) from `args` and return VALUE as `kind`; `default` when absent."""
    for i, word in enumerate(args):
        if word == name or word.startswith(name + "="):
            value = word.split("=", 1)[1] if "=" in word else (args[i + 1] if i + 1 < len(args) else None)
            del args[i : i + (1 if "=" in word else 2)]
            try:
                return kind(value)
            except (TypeError, ValueError):
                raise LightFTError(f"{name}: expected a {kind.__name__}, got {value!r}.") from None
    return default
