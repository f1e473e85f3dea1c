"""LightFTModule: what every training method shares.

`configure_model` (idempotent, once per rank) loads the backbone -> quantizes (as the PEFT strategy asks) -> applies
the PEFT strategy -> enables non-reentrant gradient checkpointing. Also: AdamW-family optimizers with warmup
schedules, gradient-norm logging, and checkpoints that hold only the trainable weights (never a frozen base).
"""

from __future__ import annotations

import inspect
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, is_dataclass, replace
from typing import Any

import lightning.pytorch as pl
import torch
from jsonargparse import lazy_instance
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MeanMetric

from lightft.checkpoints import RNG_KEY, gather_rng_states, rng_state, set_rng_state
from lightft.compat import check_compatibility
from lightft.errors import LightFTError
from lightft.models.forward import ComputeSettings, LMOutput, check_output_head, token_logps
from lightft.models.kernels import apply_liger
from lightft.models.loading import Head, ModelSpec, load_model, load_tokenizer, torch_dtype
from lightft.models.offload import OffloadActivations
from lightft.optim import OptimizerConfig, SchedulerConfig, build_optimizer, build_scheduler, parameter_groups
from lightft.peft.base import PEFTStrategy, count_parameters, state_dict_bytes
from lightft.peft.lora import LoRA
from lightft.strategies import check_trainable_keys, release_gathered

MODEL_KEY = "model.init_args.model.path"
PRECISION_KEY = "lightft_precision"  # checkpoint entry: the run's trainer.precision


class LightFTModule(pl.LightningModule):
    """Base of the training methods: a pretrained model made trainable by a PEFT strategy.

    `model_head` says what is loaded: a causal LM, or (reward models) the backbone with a scalar head.

    Args:
        model: Which pretrained model to start from (path, dtype, GGUF file, ...).
        peft: How the model is made trainable: `lightft.peft.LoRA`, `QLoRA`, `FullFineTune`, or your own class.
        optimizer: Optimizer name and hyper-parameters.
        scheduler: Learning-rate schedule (linear warmup, then linear/cosine decay or constant).
        gradient_checkpointing: Recompute activations in the backward pass (non-reentrant) to save memory.
        compute: Chunked LM-head loss (default on), Liger kernels, activation offloading.
    """

    model_head: Head = "causal_lm"

    def __init__(
        self,
        model: ModelSpec,
        peft: PEFTStrategy = lazy_instance(LoRA),
        optimizer: OptimizerConfig = OptimizerConfig(),
        scheduler: SchedulerConfig = SchedulerConfig(),
        gradient_checkpointing: bool = True,
        compute: ComputeSettings = ComputeSettings(),
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model_spec, self.peft = model, concrete(peft)
        self.optimizer_config, self.scheduler_config = optimizer, scheduler
        self.gradient_checkpointing, self.compute = gradient_checkpointing, compute
        self._head_checked = False
        self.strict_loading = False  # checkpoints hold trainable weights only; `on_load_checkpoint` checks them
        self.model: nn.Module | None = None
        self.tokenizer: Any = None
        self.compatibility_checked = False
        self.peft_summary: dict[str, float] = {}
        self.trained_precision: str | None = None  # the run's `trainer.precision`, read from a checkpoint (export)
        self.load_device = torch.device("cpu")  # where a quantized base loads without a Trainer (export)

    # ---- model construction -------------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        """Config-time checks (before any weight loads) when the CLI has not run them already."""
        if not self.compatibility_checked:
            trainer = self._trainer
            check_compatibility(self, trainer.datamodule if trainer is not None else None, trainer)
            self.compatibility_checked = True
        trainer = self._trainer
        interval, accumulate = (
            getattr(trainer, "val_check_interval", None),
            getattr(trainer, "accumulate_grad_batches", 1),
        )
        if stage == "fit" and isinstance(interval, int) and accumulate > 1 and interval % accumulate:
            rank_zero_warn(
                f"trainer.val_check_interval ({interval} micro-batches) is not a multiple of accumulate_grad_batches "
                f"({accumulate}): validation, and a checkpoint saved after it, fall inside an optimizer step, and a "
                f"run resumed from such a checkpoint loses that step's first gradients; use a multiple of {accumulate}."
            )

    def configure_model(self) -> None:
        """Load -> quantize -> apply PEFT -> gradient checkpointing. Runs once; later calls do nothing."""
        if self.model is not None:
            return
        self.tokenizer = load_tokenizer(self.model_spec, key=MODEL_KEY)
        self.model = self.build_model(quantize=True)
        self.peft_summary = peft_summary(self.peft, self.model)
        rank_zero_info(
            f"{type(self.peft).__name__}: {self.peft_summary['trainable_params']:,} trainable of "
            f"{self.peft_summary['total_params']:,} parameters ({self.peft_summary['trainable_percent']:.3f}%), "
            f"adapter {self.peft_summary['adapter_mb']:.2f} MB on disk"
        )

    def on_fit_start(self) -> None:
        """Log the PEFT summary (trainable and total parameters, adapter size) to every logger."""
        for logger in self.loggers:
            logger.log_metrics({f"peft/{k}": float(v) for k, v in self.peft_summary.items()}, step=0)

    def build_model(self, quantize: bool = True) -> nn.Module:
        """A freshly loaded, PEFT-wrapped backbone (`quantize=False` loads an unquantized base, e.g. to merge)."""
        precision = str(self._trainer.precision) if self._trainer is not None else self.trained_precision
        dtype = torch_dtype(self.model_spec, precision)
        quantization = self.peft.quantization_config(dtype) if quantize else None
        device_map = {"": self._load_device()} if quantization is not None else None
        base = load_model(
            self.model_spec, self.tokenizer, precision, quantization, device_map, key=MODEL_KEY, head=self.model_head
        )
        if self.compute.kernels == "liger":
            apply_liger(base)  # before PEFT: the adapters then sit inside Liger's MLP and attention
        model = apply_seeded(self.peft, base)
        if self.gradient_checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": False})
            model.config.use_cache = False
        return model.train()  # from_pretrained returns eval mode; dropout must be active while training

    def _load_device(self) -> torch.device:
        return self._trainer.strategy.root_device if self._trainer is not None else self.load_device

    def lm_logps(
        self,
        model: nn.Module,
        batch: dict[str, Any],
        labels: Tensor | None = None,
        entropy: bool = False,
        keep_hidden: bool = False,
    ) -> LMOutput:
        """Next-token log-probs of a batch's trained positions under `model` (the policy, or a reference copy).

        By default the LM head sees only the trained positions, a chunk at a time (`compute.chunked_loss`); the
        training forward keeps its saved activations in host memory with `compute.activation_offloading`.
        """
        if self.compute.chunked_loss and not self._head_checked:
            self._head_checked = True
            if not check_output_head(model, self.device):
                rank_zero_warn(f"{type(model).__name__}: applying its output layer to hidden states does not give its "
                               "own logits; using the full logits (compute.chunked_loss: false).")  # fmt: skip
                self.compute = replace(self.compute, chunked_loss=False)
        with self.saved_activations():
            output = token_logps(
                model,
                batch["input_ids"],
                batch["labels"] if labels is None else labels,
                batch.get("attention_mask"),
                batch.get("position_ids"),
                self.compute,
                entropy,
                keep_hidden,
            )
        if model is not self.model:
            release_gathered(model)  # FSDP2: a frozen reference copy has no backward to reshard its own weights
        return output

    def saved_activations(self) -> AbstractContextManager[Any]:
        """Where a training forward keeps what backward needs: on the device, or in host memory
        (`compute.activation_offloading`).
        """  # noqa: D205
        if torch.is_grad_enabled() and self.training and self.compute.activation_offloading:
            return OffloadActivations()
        return nullcontext()

    def log_eval_means(self, metrics: nn.ModuleDict, stage: str, values: dict[str, Tensor]) -> None:
        """Log `{stage}/{name}` as the mean of per-example `values` over the whole epoch and all ranks."""
        for name, value in values.items():
            metric = metrics[f"{stage}_{name}"]
            metric.update(value.detach())
            self.log(f"{stage}/{name}", metric, prog_bar=name != "margin", on_epoch=True, batch_size=len(value))

    # ---- optimisation -------------------------------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        """Optimizer over trainable parameters and a per-step learning-rate schedule."""
        assert self.model is not None, "configure_model must run first"
        groups = parameter_groups(self, self.optimizer_config.weight_decay)  # the model and any head (value, ...)
        if not groups:
            raise LightFTError("model.init_args.peft: the strategy left no trainable parameter.")
        optimizer = build_optimizer(groups, self.optimizer_config)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = build_scheduler(optimizer, self.scheduler_config, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Log the total gradient norm (before clipping)."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if grads:
            self.log("train/grad_norm", torch.nn.utils.get_total_norm(grads), on_step=True, on_epoch=False)

    # ---- checkpoints --------------------------------------------------------------------------------------------

    def trainable_keys(self) -> set[str]:
        """State-dict keys of the parameters that train (what a checkpoint stores)."""
        return {name for name, param in self.named_parameters() if param.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only trainable weights; make hyper-parameters plain data (loadable with `weights_only=True`); add
        every rank's random state (all ranks run this hook).
        """  # noqa: D205
        keys = self.trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keys}
        if not checkpoint["state_dict"] and self.global_rank == 0:  # sharding strategies gather onto rank 0 only
            raise RuntimeError("refusing to write a checkpoint without trainable weights")
        checkpoint["hyper_parameters"] = plain_hparams(self)
        if self._trainer is not None:
            checkpoint[RNG_KEY] = gather_rng_states(self.trainer)
            checkpoint[PRECISION_KEY] = str(self.trainer.precision)  # export rebuilds the model in the run's dtype

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Fail clearly when the checkpoint lacks weights this model trains (another model or strategy); keep the
        random states for `on_train_start`.
        """  # noqa: D205
        self._resume_rng = checkpoint.get(RNG_KEY)
        self.trained_precision = checkpoint.get(PRECISION_KEY, self.trained_precision)
        if "state_dict" not in checkpoint:
            return  # a sharding strategy (FSDP2) loaded the weights itself and checked their keys
        check_trainable_keys(self, checkpoint["state_dict"], "the checkpoint")

    # ---- random state: resume draws what an uninterrupted run draws ---------------------------------------------

    def on_train_start(self) -> None:
        """A resumed run continues each rank's random streams where the checkpoint left them (after the sanity
        check, which the uninterrupted run did not repeat at this point).
        """  # noqa: D205
        _align_batch_progress(self.trainer)
        states, self._resume_rng = getattr(self, "_resume_rng", None), None
        if not states:
            return
        if len(states) == self.trainer.world_size:
            set_rng_state(states[self.global_rank])
            return
        seed = torch.initial_seed() + 1_000_003 * self.trainer.global_step + self.global_rank
        pl.seed_everything(seed % 2**32, workers=True, verbose=False)
        rank_zero_warn(
            f"the checkpoint holds the random states of {len(states)} rank(s), this run has "
            f"{self.trainer.world_size}: each rank is reseeded from the seed, step and rank (dropout masks and samples "
            "differ from an uninterrupted run; weights, optimizer and data order do not)."
        )

    def on_validation_start(self) -> None:
        """Validation during fit does not move the training's random streams (resume and val settings cannot
        change the training trajectory).
        """  # noqa: D205
        self._rng_before_validation = rng_state() if self.trainer.state.fn == "fit" else None

    def on_validation_end(self) -> None:
        """Put the training's random streams back as they were before validation."""
        state = getattr(self, "_rng_before_validation", None)
        if state is not None:
            set_rng_state(state)
            self._rng_before_validation = None


def _align_batch_progress(trainer: pl.Trainer) -> None:
    """After resuming on another number of processes, count this epoch's micro-batches as the new shape does.

    Lightning restored its in-epoch batch counters from the checkpoint (the old number of micro-batches per rank);
    accumulation boundaries and the end of the epoch are decided from them, so they must match where the data
    loader now resumes (`ResumableDataLoader.load_state_dict`).
    """
    restored = getattr(trainer.train_dataloader, "restored_from", None)
    if not restored:
        return
    old, new = restored
    progress = trainer.fit_loop.epoch_loop.batch_progress
    for counter in (progress.current, progress.total):
        for name in ("ready", "started", "processed", "completed"):
            setattr(counter, name, getattr(counter, name) - old + new)
    trainer.train_dataloader.restored_from = None


def apply_seeded(peft: Any, base: nn.Module) -> nn.Module:
    """`peft.apply(base)` with the random state the run was seeded with (`seed_everything`), restored afterwards.

    New weights (LoRA's A, prompt embeddings, ...) start the same whatever building the base consumed (a loaded or
    random base, ZeRO-3's partitioned construction), so every strategy trains the same initial adapter.
    """
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(torch.initial_seed())
        return peft.apply(base)


def eval_means(names: tuple[str, ...], stages: tuple[str, ...] = ("val", "test")) -> nn.ModuleDict:
    """One torchmetrics `MeanMetric` per stage and name, for `LightFTModule.log_eval_means`."""
    return nn.ModuleDict({f"{stage}_{name}": MeanMetric() for stage in stages for name in names})


def peft_summary(peft: Any, model: nn.Module) -> dict[str, float]:
    """Trainable and total parameters and the size of what the strategy saves (MB, safetensors)."""
    trainable, total = count_parameters(model)
    return {
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": 100 * trainable / max(1, total),
        "adapter_mb": state_dict_bytes(peft.trainable_state_dict(model)) / 1e6,
    }


def concrete(obj: Any) -> Any:
    """A real instance in place of a jsonargparse lazy default (the module was built in Python, not by the CLI)."""
    cls = getattr(obj, "_lazy_class_type", None)
    return cls(**obj.lazy_get_init_args()) if cls is not None else obj


def plain_hparams(module: pl.LightningModule) -> dict[str, Any]:
    """Hyper-parameters as plain data with `_class_path`, re-instantiable by `lightning.pytorch.cli.instantiate_module`.

    Under LightningCLI they already are (the parsed config); a module built in Python is converted here. Either way
    `SFTModule.load_from_checkpoint(path)` works, through Lightning's allow-listed CLI instantiator.
    """
    hparams = dict(module.hparams)
    if "_class_path" not in hparams:
        hparams = {"_class_path": _class_path(module), **{k: _plain(v) for k, v in hparams.items()}}
        hparams["_instantiator"] = "lightning.pytorch.cli.instantiate_module"
    return hparams


def _class_path(obj: Any) -> str:
    cls = obj if inspect.isclass(obj) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _init_parameters(cls: type) -> list[str]:
    """Named `__init__` parameters of `cls` and of the bases it forwards `**kwargs` to.

    Objects store them as attributes of the same name, as lightft's strategies do.
    """
    names: list[str] = []
    for klass in cls.__mro__:
        if klass is object or "__init__" not in vars(klass):
            continue
        for name, param in inspect.signature(klass.__init__).parameters.items():
            if name != "self" and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD) and name not in names:
                names.append(name)
    return names


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if is_dataclass(value) and not isinstance(value, type):
        return _plain(asdict(value))
    if hasattr(value, "__dict__"):
        value = concrete(value)
        names = [n for n in _init_parameters(type(value)) if hasattr(value, n)]
        return {"class_path": _class_path(value), "init_args": {n: _plain(getattr(value, n)) for n in names}}
    raise TypeError(f"cannot store hyper-parameter of type {type(value).__name__} in a checkpoint")
