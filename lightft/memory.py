"""Peak memory per rank, estimated from a config before anything loads (`lightft estimate`).

The model is built on the meta device from its config (no weights, no memory). From it:

- **weights**: every parameter at its dtype; a base quantized by the PEFT strategy (QLoRA, LoRA8bit) stores its
  linear weights (not the output head) at 4 bits + the quantization constants (NF4/FP4: one fp32 absmax per block
  of 64; double quantization: one byte per block + one fp32 per 256 blocks) or at 8 bits + one fp32 scale per row.
- **gradients**: one per trainable parameter, at its dtype.
- **optimizer**: AdamW keeps two states per trainable parameter at its dtype; the bitsandbytes 8-bit AdamWs one
  byte each (+ one fp32 absmax per block of 256), except tensors under 4,096 elements, which keep 32-bit states.
  Paged AdamWs keep the states of tensors of 100k elements or more in CUDA unified memory, which the driver moves
  to the host under pressure: counted as host memory.
- **activations**: what autograd saves for backward in one training forward, traced on fake tensors (no memory,
  no compute) with the run's batch and sequence length (each saved storage once). With gradient checkpointing
  only each decoder layer's input is kept, plus one layer's activations while it is recomputed in backward; the
  output layer's and the loss's work (below) is over before that, so only what it needs beyond one layer counts.
- **logits and loss**: with the chunked loss (the default), one chunk of positions' logits and its float32 work in
  backward (chunk x vocab x (compute bytes + 8), measured on CPU), the trained positions' hidden states the chunks
  keep, and a trainable output layer's per-chunk weight gradient; without it, the (batch, length, vocab) logits, the
  float32 copy the loss takes of the trained positions (all of them, the worst case) and its log-softmax.
- **activation offloading** (CUDA): what autograd saves for backward above 1 MiB waits in host memory; on the device
  stays one layer's activations while it is recomputed or back-propagated.
- **extra models**: DPO's frozen reference copy (full fine-tuning with `reference: live`); PPO's reward model (a
  `RewardModelScorer`: its weights at its config's dtype). PPO's and GRPO's reference is the policy with its adapter
  disabled (no copy).
- **PPO rollouts**: the no-grad passes over the whole rollout (prompts x samples per prompt) before the minibatch
  updates: generation's KV cache, then the policy's logits over every row (+ all hidden states for the critic),
  whichever is larger; counted where they exceed the training forward of one minibatch.
- **sharding** (per rank, `world` ranks): FSDP/FSDP2 shard weights, gradients and optimizer states and gather one
  decoder layer at a time (two with prefetch); ZeRO-1 shards optimizer states, ZeRO-2 also gradients, ZeRO-3 also
  weights; offloaded optimizer states / parameters move to host memory.
- **runtime**: on GPUs the CUDA context and kernels (`CUDA_CONTEXT`, not part of `max_memory_allocated`).

Assumptions are stated where they are made; `lightft bench` measures the same cells beside these numbers.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

GIB = 2**30
CUDA_CONTEXT = 0.5 * GIB  # CUDA context + cuBLAS/cuDNN workspaces of a training process (typical for torch 2.x)
NF4_BLOCK = 64  # bitsandbytes 4-bit blocksize (absmax per block)
DQ_BLOCK = 256  # double quantization: blocks of absmax per second-level constant
OPT8_BLOCK = 256  # bitsandbytes 8-bit optimizer blocksize
OPT8_MIN_SIZE = 4096  # tensors smaller than this keep 32-bit optimizer states in bitsandbytes
PAGED_MIN_SIZE = 100_000  # bitsandbytes' paged optimizers page the states of tensors of at least this many elements


@dataclass
class Plan:
    """Everything the estimate depends on, read from a config (`lightft.commands.estimate.plan_and_model`)."""

    method: str = "SFTModule"  # the module's class name (reports)
    rows_per_example: int = 1  # forward rows per example (`Method.rows_per_example`: pairs 2)
    lm_logps: bool = True  # the loss reads LM log-probs (`Method.lm_logps`); False: a scalar head
    reference_copy: bool = False  # a frozen copy of the model is the reference (`Method.reference: frozen_copy`)
    batch_size: int = 1
    seq_len: int = 512
    precision: str = "32-true"
    gradient_checkpointing: bool = False
    optimizer: str = "adamw"
    strategy: str = "single"  # single, ddp, fsdp, fsdp2, deepspeed
    zero_stage: int = 0
    offload_optimizer: bool = False
    offload_parameters: bool = False
    world_size: int = 1
    accelerator: str = "gpu"
    rollout_rows: int = 0  # PPO/GRPO: sequences per rollout (prompts x samples per prompt); batch_size: a minibatch
    critic: bool = False  # PPO's value head: the rollout evaluation keeps every layer's hidden states
    reward_model_bytes: float = 0.0  # PPO: a reward model scoring the rollouts
    chunked_loss: bool = True  # the LM head and loss a chunk of positions at a time (`compute.chunked_loss`)
    loss_chunk_size: int = 0  # positions per chunk; 0: CHUNK_ELEMENTS // vocab
    activation_offloading: bool = False  # saved activations in host memory (CUDA only)
    notes: list[str] = field(default_factory=list)


@dataclass
class ParamCounts:
    """Parameters of the PEFT-wrapped model, by what memory they take."""

    frozen: dict[str, int] = field(default_factory=dict)  # dtype name -> elements (unquantized frozen weights)
    quantized: int = 0  # elements of quantized linear weights
    quantized_rows: int = 0  # output rows of those weights (8-bit: one scale per row)
    trainable: dict[str, int] = field(default_factory=dict)  # dtype name -> elements
    trainable_small: int = 0  # trainable elements in tensors under OPT8_MIN_SIZE
    trainable_paged: int = 0  # trainable elements in tensors of PAGED_MIN_SIZE or more
    layer_params: int = 0  # elements of the largest decoder layer (what FSDP/ZeRO-3 gathers at once)
    layers: int = 0

    @property
    def n_trainable(self) -> int:
        """Trainable elements."""
        return sum(self.trainable.values())

    @property
    def n_total(self) -> int:
        """All elements (quantized ones at their logical count)."""
        return sum(self.frozen.values()) + self.quantized + self.n_trainable


def _size(dtype_name: str) -> int:
    return getattr(torch, dtype_name).itemsize


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype activations are computed in under a Lightning precision string."""
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return torch.float32


def quantized_bytes(n: int, rows: int, quant: Any) -> float:
    """Bytes of `n` quantized weight elements (`rows` output rows) under a bitsandbytes config."""
    if quant is None:
        return 0.0
    if getattr(quant, "load_in_8bit", False):
        return n + 4.0 * rows
    blocks = n / NF4_BLOCK
    constants = blocks * 1 + blocks / DQ_BLOCK * 4 if quant.bnb_4bit_use_double_quant else blocks * 4
    return n / 2 + constants


def count_params(model: nn.Module, quantized: bool) -> ParamCounts:
    """Counts of a (meta-device, PEFT-wrapped) model; `quantized`: its frozen linear weights will be quantized.

    A model whose layers bitsandbytes has already quantized to 4 bits counts those weights as quantized, at their
    logical size (`lightft.peft.base.logical_numel`), whatever dtype packs them.
    """
    from lightft.peft.base import logical_numel
    from lightft.strategies import decoder_layers

    counts = ParamCounts()
    head_weights = {id(p) for name, p in model.named_parameters() if name.split(".")[-2] in ("lm_head", "score")}
    linear_weights = {id(m.weight): m.out_features for m in model.modules() if type(m) is nn.Linear}
    for param in model.parameters():
        dtype, n = str(param.dtype).removeprefix("torch."), logical_numel(param)
        if param.requires_grad:
            counts.trainable[dtype] = counts.trainable.get(dtype, 0) + n
            counts.trainable_small += n if n < OPT8_MIN_SIZE else 0
            counts.trainable_paged += n if n >= PAGED_MIN_SIZE else 0
        elif type(param).__name__ == "Params4bit":
            counts.quantized += n
            counts.quantized_rows += param.quant_state.shape[0] if param.quant_state is not None else param.shape[0]
        elif quantized and id(param) in linear_weights and id(param) not in head_weights:
            counts.quantized += n
            counts.quantized_rows += linear_weights[id(param)]
        else:
            counts.frozen[dtype] = counts.frozen.get(dtype, 0) + n
    layers = decoder_layers(model)
    counts.layers = len(layers)
    counts.layer_params = max((sum(logical_numel(p) for p in layer.parameters()) for layer in layers), default=0)
    return counts


def saved_activation_bytes(
    model: nn.Module,
    batch: int,
    seq_len: int,
    dtype: torch.dtype = torch.float32,
    logits: bool = True,
    cuda: bool = False,
    checkpointing: bool = False,
) -> tuple[int, int]:
    """Bytes autograd saves in one training forward of `model` (meta device) on a (batch, seq_len) input.

    Returns (all saved bytes, the part saved inside decoder layers). Each saved storage counts once (views share
    their base's); parameters are left out (counted as weights). `logits=False`: the forward computes no logits
    (the chunked loss applies the output layer itself). `cuda`: dropout keeps a one-byte mask (CUDA's fused
    dropout) where the CPU trace sees its noise in the input's dtype. `checkpointing`: the forward runs with
    non-reentrant gradient checkpointing, so what is kept is each checkpointed layer's inputs (hidden states, the
    attention mask, position embeddings). Runs on fake tensors: no memory, no compute.
    """
    from lightft.strategies import decoder_layers

    sizes: dict[int, tuple[torch.Tensor, int]] = {}
    depth = {"layer": 0, "dropout": 0}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        base = tensor._base if tensor._base is not None else tensor
        if not isinstance(base, nn.Parameter) and id(base) not in sizes:  # weights are counted as weights
            itemsize = 1 if cuda and depth["dropout"] else base.element_size()
            sizes[id(base)] = (base, base.numel() * itemsize * (1 if depth["layer"] else -1))  # the base keeps its id
        return tensor

    def counter(name: str, step: int) -> Any:
        def hook(*_: Any) -> None:
            depth[name] += step

        return hook

    # fake tensors, not meta ones: transformers skips its data-dependent mask checks for them (is_tracing)
    mode = FakeTensorMode(allow_non_fake_inputs=True)  # non-fake inputs: the meta weights being converted
    model = _in_dtype(copy.deepcopy(model), dtype)
    with mode:
        model = _fake_weights(model).train()  # training mode: dropout saves its masks
    if checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    hooks = []
    for modules, name in ((decoder_layers(model), "layer"), ([m for m in model.modules() if isinstance(m, nn.Dropout)],
                                                            "dropout")):  # fmt: skip
        for module in modules:
            hooks += [
                module.register_forward_pre_hook(counter(name, 1)),
                module.register_forward_hook(counter(name, -1)),
            ]
    try:
        with mode:
            ids = torch.zeros(batch, seq_len, dtype=torch.long)
            keep = {} if logits else {"logits_to_keep": torch.empty(0, dtype=torch.long)}
            with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                model(input_ids=ids, use_cache=False, **keep)
    finally:
        for hook in hooks:
            hook.remove()
    total = sum(abs(size) for _, size in sizes.values())
    return total, sum(size for _, size in sizes.values() if size > 0)


@dataclass
class Estimate:
    """Bytes per rank by component (device memory; `host` is what offloading moves to CPU memory)."""

    components: dict[str, float]
    host: float
    plan: Plan
    params: dict[str, int]

    @property
    def total(self) -> float:
        """Bytes on the device at the peak."""
        return sum(self.components.values())

    def to_json(self) -> str:
        """The estimate for machines (`--json`)."""
        return json.dumps(
            {
                "total_bytes": self.total,
                "total_gib": self.total / GIB,
                "components_bytes": self.components,
                "host_bytes": self.host,
                "params": self.params,
                "plan": asdict(self.plan),
            },
            indent=2,
        )

    def table(self) -> str:
        """A breakdown table (GiB per rank)."""
        p = self.plan
        where = f"{p.world_size} rank(s), {p.strategy}" + (f" ZeRO-{p.zero_stage}" if p.zero_stage else "")
        rows = f" x {p.rows_per_example} rows" if p.rows_per_example > 1 else ""
        lines = [
            f"Memory estimate per rank of {p.method} ({where}, {p.precision}, batch {p.batch_size}{rows} x {p.seq_len} "
            f"tokens, {p.optimizer}, gradient checkpointing {'on' if p.gradient_checkpointing else 'off'})",
            f"params: {self.params['total']:,} total, {self.params['trainable']:,} trainable",
            "",
            "| component | GiB |",
            "|---|---:|",
        ]
        lines += [f"| {name} | {value / GIB:.3f} |" for name, value in self.components.items()]
        lines.append(f"| **total** | **{self.total / GIB:.3f}** |")
        if self.host:
            lines.append(f"| (host memory, offloaded) | {self.host / GIB:.3f} |")
        lines += [f"note: {note}" for note in p.notes]
        return "\n".join(lines)


def estimate(model: nn.Module, plan: Plan, quantization: Any = None) -> Estimate:
    """Peak memory per rank of training `model` (PEFT-wrapped, on the meta device) under `plan`."""
    counts = count_params(model, quantization is not None)
    weights, gradients, optimizer = model_states(counts, plan, quantization)
    weights, gradients, optimizer, gathered, host = shard(counts, plan, weights, gradients, optimizer)
    paged = paged_bytes(counts, plan, optimizer)
    activations, logits, offloaded = activation_bytes(model, counts, plan)
    optimizer, host = optimizer - paged, host + offloaded + paged
    components = {
        "weights": weights,
        "gradients": gradients,
        "optimizer states": optimizer,
        "activations": activations,
        "logits and loss": logits,
    }
    if gathered:
        components["gathered layers (sharding)"] = gathered
    if plan.reference_copy:
        components["reference model"] = weights  # full fine-tuning: a frozen copy of the model is the reference
    if plan.reward_model_bytes:
        components["reward model"] = plan.reward_model_bytes
    if plan.rollout_rows:
        beyond = rollout_bytes(model, plan) - activations - logits
        if beyond > 0:
            components["rollout passes (beyond training)"] = beyond
    if plan.accelerator == "gpu":
        components["CUDA context"] = CUDA_CONTEXT
    return Estimate(components, host, plan, {"total": counts.n_total, "trainable": counts.n_trainable})


def model_states(counts: ParamCounts, plan: Plan, quantization: Any) -> tuple[float, float, float]:
    """Unsharded bytes of weights, gradients and optimizer states."""
    csize = compute_dtype(plan.precision).itemsize
    trainable_bytes = sum(n * _size(d) for d, n in counts.trainable.items())
    weights = sum(n * _size(d) for d, n in counts.frozen.items()) + trainable_bytes
    weights += quantized_bytes(counts.quantized, counts.quantized_rows, quantization)
    gradients = float(trainable_bytes)
    n_train = counts.n_trainable
    if plan.optimizer in ("adamw_8bit", "paged_adamw_8bit"):
        big = n_train - counts.trainable_small
        optimizer = 2.0 * (big + big / OPT8_BLOCK * 4) + 2.0 * 4 * counts.trainable_small
    else:
        optimizer = 2.0 * trainable_bytes
    if plan.strategy == "deepspeed" and plan.zero_stage and csize < 4:
        # DeepSpeed runs the model in 16 bits and keeps fp32 master weights with the optimizer states
        optimizer += 4.0 * n_train
        weights -= trainable_bytes - n_train * csize
        gradients = float(n_train * csize)
    return float(weights), gradients, optimizer


def paged_bytes(counts: ParamCounts, plan: Plan, optimizer: float) -> float:
    """The part of the optimizer states a paged bitsandbytes optimizer keeps in CUDA unified memory (tensors of
    100k elements or more): evicted to the host under memory pressure, and not in CUDA's allocated memory.
    """  # noqa: D205
    if not plan.optimizer.startswith("paged_") or plan.accelerator != "gpu" or not counts.n_trainable:
        return 0.0
    return optimizer * counts.trainable_paged / counts.n_trainable


def shard(
    counts: ParamCounts, plan: Plan, weights: float, gradients: float, optimizer: float
) -> tuple[float, float, float, float, float]:
    """Per-rank weights, gradients, optimizer states, gathered-layer bytes and host (offloaded) bytes."""
    world = max(1, plan.world_size)
    fsdp = plan.strategy in ("fsdp", "fsdp2")
    zero = plan.zero_stage if plan.strategy == "deepspeed" else 0
    gathered = host = 0.0
    if fsdp or zero == 3:
        weights /= world
        csize = compute_dtype(plan.precision).itemsize
        gathered = 2.0 * counts.layer_params * csize  # the unit computing + the next one prefetched
    if fsdp or zero >= 2:
        gradients /= world
    if fsdp or zero >= 1:
        optimizer /= world
    if zero and plan.offload_optimizer:
        host, optimizer = host + optimizer, 0.0
    if zero == 3 and plan.offload_parameters:
        host, weights = host + weights, 0.0
    return weights, gradients, optimizer, gathered, host


def activation_bytes(model: nn.Module, counts: ParamCounts, plan: Plan) -> tuple[float, float, float]:
    """Device bytes saved for backward, the logits and loss work, and the host bytes activation offloading takes."""
    dtype = compute_dtype(plan.precision)
    csize = dtype.itemsize
    rows = plan.batch_size * plan.rows_per_example  # e.g. chosen and rejected in one forward
    lm_loss = plan.lm_logps
    chunked = lm_loss and plan.chunked_loss
    trace = partial(saved_activation_bytes, model, rows, plan.seq_len, dtype, not chunked, plan.accelerator == "gpu")
    saved, in_layers = trace()
    logits = loss_bytes(model, plan, rows * plan.seq_len) if lm_loss else 0.0
    activations, host = float(saved), 0.0
    one_layer = in_layers / counts.layers if counts.layers else 0.0
    if plan.gradient_checkpointing and counts.layers:
        # kept: each checkpointed layer's inputs, plus one layer's activations while it is recomputed in backward.
        # The output layer's and the loss's work is done before the first layer is recomputed, so only what it
        # needs beyond that layer adds to the peak.
        kept, _ = trace(checkpointing=True)
        boundaries = counts.layers * rows * plan.seq_len * model.config.hidden_size * csize  # the hidden states
        activations = kept + one_layer
        logits = max(0.0, logits - one_layer)
        if plan.activation_offloading and plan.accelerator == "gpu":
            activations, host = activations - boundaries, float(boundaries)  # the layer inputs wait on the host
    elif plan.activation_offloading and plan.accelerator == "gpu" and counts.layers:
        activations, host = saved - in_layers + one_layer, in_layers - one_layer  # back one layer at a time
    return activations, logits, host


def loss_bytes(model: nn.Module, plan: Plan, positions: int) -> float:
    """Peak bytes of the output layer and the loss over `positions` trained positions (all of the batch: worst case).

    Chunked: one chunk's work — its logits in a 16-bit compute dtype, plus two float32 (chunk, vocab) buffers (the
    float32 logits and the logsumexp's exponentials in forward, the gradient built in place in backward; 8 bytes
    per logit measured in fp32 on CPU) — the positions' hidden states the chunks keep for backward, and a trainable
    output layer's weight gradient of one chunk before it is added up.
    Unchunked: the logits, the loss's float32 copy of the trained positions and its log-softmax.
    """
    from lightft.losses.logprobs import CHUNK_ELEMENTS

    csize, vocab = compute_dtype(plan.precision).itemsize, model.config.vocab_size
    if not plan.chunked_loss:
        return float(positions * vocab * (csize + 2 * 4))
    chunk = min(positions, plan.loss_chunk_size or max(1, CHUNK_ELEMENTS // vocab))
    work = chunk * vocab * ((csize if csize < 4 else 0) + 2 * 4)  # float32 logits are not copied by the upcast
    head = model.get_output_embeddings().weight
    head_grad = head.numel() * head.element_size() if head.requires_grad else 0
    return float(work + positions * model.config.hidden_size * csize + head_grad)


def rollout_bytes(model: nn.Module, plan: Plan) -> float:
    """Peak of PPO's no-grad passes over a rollout: the KV cache at full length, or the evaluation's (chunked: the
    final hidden states and one chunk's logits; unchunked: every row's logits in the compute dtype, the float32 work
    one row at a time, and, with a critic, every layer's hidden states).
    """  # noqa: D205
    from lightft.losses.logprobs import CHUNK_ELEMENTS

    cfg, csize = model.config, compute_dtype(plan.precision).itemsize
    rows, length = plan.rollout_rows, plan.seq_len
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    kv_cache = 2 * cfg.num_hidden_layers * rows * length * kv_heads * head_dim * csize
    if plan.chunked_loss:  # the final hidden states, and one chunk's logits with its float32 entropy work
        chunk = min(rows * length, plan.loss_chunk_size or max(1, CHUNK_ELEMENTS // cfg.vocab_size))
        evaluation = rows * length * cfg.hidden_size * csize + chunk * cfg.vocab_size * (csize + 3 * 4)
    else:  # the whole rollout's logits, one row's float32 work; every layer's hidden states for the critic
        evaluation = rows * length * cfg.vocab_size * csize + 2 * length * cfg.vocab_size * 4
        if plan.critic:
            evaluation += (cfg.num_hidden_layers + 1) * rows * length * cfg.hidden_size * csize
    return float(max(kv_cache, evaluation))


def _fake_weights(model: nn.Module) -> nn.Module:
    """`model` with fake CPU tensors in place of its meta weights (inside a `FakeTensorMode`), shared ones once.

    `to_empty` swaps each parameter in place and fails on one a second module holds too (prompt tuning keeps the
    word embeddings in its PEFT wrapper as well); building each new parameter once keeps the sharing.
    """
    new: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is not None:
                if id(param) not in new:
                    new[id(param)] = nn.Parameter(torch.empty_like(param, device="cpu"), param.requires_grad)
                module._parameters[name] = new[id(param)]
        for name, buffer in list(module._buffers.items()):
            if buffer is not None:
                module._buffers[name] = torch.empty_like(buffer, device="cpu")
    return model


def _in_dtype(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """`model` (a copy) with its frozen floating weights in the compute dtype (free on the meta device)."""
    if dtype == torch.float32:
        return model
    for param in model.parameters():
        if not param.requires_grad and param.is_floating_point():
            param.data = param.data.to(dtype)
    return model
