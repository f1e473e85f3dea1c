"""LightFTModule: what every training method shares — the model's lifecycle and its optimisation.

`configure_model` (idempotent, once per rank) loads the backbone -> quantizes (as the PEFT strategy asks) ->
fake-quantizes its linear layers (`qat:`) -> applies the PEFT strategy -> enables non-reentrant gradient
checkpointing. Also: the LM log-probs every method's loss reads, the optimizer step's loss scaling, AdamW-family
optimizers with warmup schedules and gradient-norm logging. What a
checkpoint holds and how a resume continues exactly: `lightft.checkpoints.hooks`. What the method is (its data, its
reference, its head): the class's `method` declaration (`lightft.modules.method`).
"""

from __future__ import annotations

import importlib
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from typing import Any, ClassVar

import torch
from jsonargparse import lazy_instance
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MeanMetric

from lightft.checkpoints.hooks import CheckpointHooks, warn_mid_step_validation
from lightft.checkpoints.hparams import concrete
from lightft.compat import check_compatibility
from lightft.data.batches import TokenBatch
from lightft.errors import LightFTError
from lightft.models.forward import ComputeSettings, LMOutput, check_output_head, input_positions, token_logps
from lightft.models.kernels import apply_liger
from lightft.models.loading import ModelSpec, load_model, load_tokenizer, torch_dtype
from lightft.models.offload import OffloadActivations
from lightft.modules.method import Method
from lightft.optim import OptimizerConfig, SchedulerConfig, build_optimizer, build_scheduler, parameter_groups
from lightft.peft.base import PEFTStrategy, apply_seeded, peft_summary
from lightft.peft.lora import LoRA
from lightft.quantization.schemes import QuantScheme
from lightft.strategies import release_gathered

MODEL_KEY = "model.init_args.model.path"


class LightFTModule(CheckpointHooks):
    """Base of the training methods: a pretrained model made trainable by a PEFT strategy.

    A method subclasses it, declares itself (`method = Method(...)`, read by compat, estimate, doctor, export and
    bench) and forwards the arguments below with `**kwargs` (they are documented here once).

    Args:
        model: Which pretrained model to start from (path, dtype, GGUF file, ...).
        peft: How the model is made trainable: `lightft.peft.LoRA`, `QLoRA`, `FullFineTune`, or your own class.
        optimizer: Optimizer name and hyper-parameters.
        scheduler: Learning-rate schedule (linear warmup, then linear/cosine decay or constant).
        gradient_checkpointing: Recompute activations in the backward pass (non-reentrant) to save memory.
        compute: Chunked LM-head loss (default on), Liger kernels, activation offloading.
        qat: Quantization-aware training: fake-quantize the linear layers' weights (and activations for
            int8_dynamic) with the scheme of the intended export; `lightft quantize` / `lightft export` convert with
            the same scheme (`lightft.quantization.qat`). Schemes: int8_weight_only, int4_weight_only,
            intx_weight_only, int8_dynamic, symmetric, per_channel or per_group; not over a quantized base (QLoRA).
    """

    method: ClassVar[Method]

    def __init__(
        self,
        model: ModelSpec,
        peft: PEFTStrategy = lazy_instance(LoRA),
        optimizer: OptimizerConfig = OptimizerConfig(),
        scheduler: SchedulerConfig = SchedulerConfig(),
        gradient_checkpointing: bool = True,
        compute: ComputeSettings = ComputeSettings(),
        qat: QuantScheme | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model_spec, self.peft = model, concrete(peft)
        self.optimizer_config, self.scheduler_config = optimizer, scheduler
        self.gradient_checkpointing, self.compute = gradient_checkpointing, compute
        self.qat = qat
        self._head_checked = False
        self.strict_loading = False  # checkpoints hold trainable weights only; `on_load_checkpoint` checks them
        self.model: nn.Module | None = None
        self.tokenizer: Any = None
        self.compatibility_checked = False
        self.peft_summary: dict[str, float] = {}
        self.load_device = torch.device("cpu")  # where a quantized base loads without a Trainer (export)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """Lightning's `load_from_checkpoint`; on `LightFTModule` itself, the checkpoint's own method class is built."""
        if cls is LightFTModule:
            hparams = torch.load(checkpoint_path, map_location="cpu", weights_only=True).get("hyper_parameters", {})
            module, _, name = str(hparams.get("_class_path", "")).rpartition(".")
            if not module:
                raise LightFTError(f"'{checkpoint_path}' names no lightft module class; load it with its own class.")
            return getattr(importlib.import_module(module), name).load_from_checkpoint(checkpoint_path, *args, **kwargs)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def describe(self) -> Method:
        """This method as configured: the class's declaration, refined by settings (a subclass may override)."""
        method = getattr(type(self), "method", None)
        if method is None:
            raise LightFTError(
                f"model.class_path: {type(self).__qualname__} declares no `method = lightft.modules.Method(...)` "
                "(its data module, batch type, reference and head); add one to the class."
            )
        return method

    def check_datamodule(self, datamodule: Any) -> None:
        """The data module feeds this method (`describe().data` and `.batch`)."""
        message = self.describe().data_error(type(self).__name__, datamodule)
        if message:
            raise LightFTError(message)

    def memory_plan(self, examples: int, seq_len: int, notes: list[str]) -> dict[str, Any]:
        """What `lightft estimate` plans one training forward for (`lightft.memory.Plan` fields): a micro-batch of
        `examples` at `seq_len` tokens. A method with another shape (rollouts) overrides it; `notes` get its
        assumptions.
        """  # noqa: D205
        return {"batch_size": examples, "seq_len": seq_len}

    # ---- model construction -------------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        """Config-time checks (before any weight loads) when the CLI has not run them already."""
        trainer = self.attached_trainer()
        if not self.compatibility_checked:
            check_compatibility(self, trainer.datamodule if trainer is not None else None, trainer)
            self.compatibility_checked = True
        if stage == "fit":
            warn_mid_step_validation(trainer)

    def configure_model(self) -> None:
        """Load -> quantize -> fake-quantize (qat) -> PEFT -> gradient checkpointing. Runs once, later calls do not."""
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
        """A freshly loaded, PEFT-wrapped backbone (`quantize=False` loads an unquantized base, e.g. to merge).

        With `qat`, the base's linear layers are fake-quantized before the PEFT strategy wraps them (its adapters stay
        float), whatever `quantize` says: the fake quantizers hold no weights (the state dict is the float model's),
        and a model rebuilt to merge keeps them so that `lightft.quantization.qat.convert` can follow the merge.
        """
        trainer = self.attached_trainer()
        precision = str(trainer.precision) if trainer is not None else self.trained_precision
        dtype = torch_dtype(self.model_spec, precision)
        quantization = self.peft.quantization_config(dtype) if quantize else None
        device_map = {"": self._load_device()} if quantization is not None else None
        base = load_model(
            self.model_spec,
            self.tokenizer,
            precision,
            quantization,
            device_map,
            key=MODEL_KEY,
            head=self.describe().head,
        )
        if self.compute.kernels == "liger":
            apply_liger(base)  # before PEFT: the adapters then sit inside Liger's MLP and attention
        if self.qat is not None:
            from lightft.quantization.qat import prepare  # imports torchao, only for QAT runs

            prepare(base, self.qat)  # before PEFT, as torchtune's LoRA+QAT: the adapters stay float
        model = apply_seeded(self.peft, base)
        if self.gradient_checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": False})
            model.config.use_cache = False
        return model.train()  # from_pretrained returns eval mode; dropout must be active while training

    def _load_device(self) -> torch.device:
        trainer = self.attached_trainer()
        return trainer.strategy.root_device if trainer is not None else self.load_device

    def lm_logps(
        self,
        model: nn.Module,
        batch: TokenBatch,
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
                batch.input_ids,
                batch.labels if labels is None else labels,
                batch.attention_mask,
                batch.position_ids,
                self.compute,
                entropy,
                keep_hidden,
            )
        if model is not self.model:
            release_gathered(model)  # FSDP2: a frozen reference copy has no backward to reshard its own weights
        return output

    def logits(self, batch: TokenBatch) -> Tensor:
        """The model's next-token logits (B, T, V) of the batch's own positions (generation, inspection; the losses
        never build them unless `compute.chunked_loss` is off).
        """  # noqa: D205
        assert self.model is not None, "configure_model must run first"
        output = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                            position_ids=batch.position_ids, use_cache=False)  # fmt: skip
        return input_positions(output.logits, batch.input_ids)

    def scaled(self, loss_sum: Tensor, batch: TokenBatch) -> Tensor:
        """A micro-batch's summed loss, scaled so that the optimizer step's gradient is that of the step's summed
        loss over its normaliser (`batch.normaliser`: trained tokens or examples of the whole step, all ranks).

        Lightning divides by `accumulate_grad_batches` and DDP/FSDP average gradients over ranks; both are undone.
        """  # noqa: D205
        if batch.normaliser is None:
            raise LightFTError(
                f"{type(batch).__name__} without a normaliser: training batches come from the data module's planned "
                "train_dataloader (lightft.data.sampling.PlannedBatchSampler)."
            )
        return loss_sum * (self.trainer.accumulate_grad_batches * self.trainer.world_size / batch.normaliser)

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


def eval_means(names: tuple[str, ...], stages: tuple[str, ...] = ("val", "test")) -> nn.ModuleDict:
    """One torchmetrics `MeanMetric` per stage and name, for `LightFTModule.log_eval_means`."""
    return nn.ModuleDict({f"{stage}_{name}": MeanMetric() for stage in stages for name in names})
