"""Every method on 2 CPU processes (gloo) under DDP and FSDP2 equals 1 process with the same global batch.

Each run is a real `lightft fit` in its own process tree, chosen by the trainer overlays only (configs/trainer/
cpu2.yaml + ddp.yaml / fsdp2.yaml): the same module code runs everywhere.

Tolerances: all runs are fp32; 2 ranks sum the same per-example terms in another order (all-reduce, reduce-scatter)
so first-step gradients agree to ~1e-7 relative, asserted at rtol 1e-5 / atol 1e-6, and the step losses likewise.
Weights after 3 AdamW steps are compared at atol 2e-5: Adam divides by sqrt(v), which turns a gradient's last-bit
difference into at most a few lr * 1e-3 of weight, well under that bound for lr 3e-3.
"""

import os
import subprocess
import sys

import pytest
import torch

from lightft.checkpoints import read_checkpoint
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

OVERLAYS = {
    "single": [],
    "ddp": ["--config", "configs/trainer/cpu2.yaml", "--config", "configs/trainer/ddp.yaml"],
    "fsdp2": ["--config", "configs/trainer/cpu2.yaml", "--config", "configs/trainer/fsdp2.yaml"],
    "zero2": ["--config", "configs/trainer/cpu2.yaml", "--config", "configs/trainer/deepspeed_zero2.yaml"],
    "zero3": ["--config", "configs/trainer/cpu2.yaml", "--config", "configs/trainer/deepspeed_zero3.yaml"],
}
BATCH = {"": 4, "_rm": 4, "_dpo": 4, "_ppo": 8, "_grpo": 2}  # per device in the recipe; halved on 2 ranks


def fit(tmp_path, method: str, strategy: str, *extra: str, steps: int = 3, read: bool = True) -> dict:
    """Run `lightft fit` on configs/debug/tiny{method}.yaml; returns what the test callbacks and checkpoint hold."""
    name = f"{method or '_sft'}-{strategy}"
    batch = BATCH[method] if strategy == "single" else BATCH[method] // 2
    command = [
        sys.executable, "-m", "lightft.cli", "fit", "--config", f"configs/debug/tiny{method}.yaml",
        *OVERLAYS[strategy], "--trainer.default_root_dir", str(tmp_path / name), "--trainer.max_steps", str(steps),
        "--data.init_args.batch_size", str(batch), *extra,
    ]  # fmt: skip
    if strategy != "single":
        command += ["--trainer.callbacks+=tests.helpers.callbacks.ReplicaCheck",
                    f"--trainer.callbacks.path={tmp_path / name}-replicas.pt"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    tmp_path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    if not read:
        return {}
    out = {"weights": read_checkpoint(tmp_path / name / "checkpoints" / "last.ckpt")["state_dict"]}
    for file in ("grads", "losses", "replicas"):
        path = tmp_path / f"{name}-{file}.pt"
        if path.exists():
            out[file] = torch.load(path, weights_only=True)
    return out


def traced(tmp_path, method: str, strategy: str, *extra: str, grads: bool = True) -> dict:
    """`fit` that also records every step's loss and (`grads`) the first step's gradients."""
    out = tmp_path / f"{method or '_sft'}-{strategy}"
    dump = ["--trainer.callbacks+=tests.helpers.callbacks.GradientDump", f"--trainer.callbacks.path={out}-grads.pt"]
    return fit(
        tmp_path, method, strategy, *extra, *(dump if grads else []),
        "--trainer.callbacks+=tests.helpers.callbacks.LossTrace", f"--trainer.callbacks.path={out}-losses.pt",
    )  # fmt: skip


def assert_same_tensors(ours: dict, theirs: dict, **tolerance) -> None:
    assert ours.keys() == theirs.keys() and ours
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], msg=key, **tolerance)


@pytest.mark.parametrize("method", ["", "_rm", "_dpo"], ids=["sft", "rm", "dpo"])
def test_two_ranks_equal_one_rank_with_the_same_global_batch(tmp_path, method):
    one = traced(tmp_path, method, "single")
    for strategy in ("ddp", "fsdp2"):
        two = traced(tmp_path, method, strategy)
        assert two["replicas"]["spread"] == 0.0, strategy  # the ranks hold one model
        assert_same_tensors(two["grads"], one["grads"], rtol=1e-5, atol=1e-6)
        assert len(two["losses"]) == len(one["losses"]) == 3
        torch.testing.assert_close(torch.tensor(two["losses"]), torch.tensor(one["losses"]), rtol=1e-5, atol=1e-6)
        assert_same_tensors(two["weights"], one["weights"], rtol=0, atol=2e-5)  # the exported adapter's tensors


@pytest.mark.parametrize("method", ["_ppo", "_grpo"], ids=["ppo", "grpo"])
def test_rl_under_ddp_and_fsdp2_trains_the_same_replicated_policy(tmp_path, method):
    """PPO/GRPO normalise per rank's minibatch (as TRL does), so 2 ranks are not 1 rank with twice the prompts; DDP
    and FSDP2 run the same per-rank computation from the same seed, so they must agree with each other."""
    runs = {s: fit(tmp_path, method, s) for s in ("ddp", "fsdp2")}
    for run in runs.values():
        assert run["replicas"]["spread"] == 0.0
    assert_same_tensors(runs["fsdp2"]["weights"], runs["ddp"]["weights"], rtol=0, atol=2e-5)


def test_qlora_under_fsdp2_equals_one_rank(tmp_path):
    """4-bit base weights sharded by FSDP2 (stored as float32 words); bitsandbytes restores the quantization state
    of a gathered weight from its layer, so 2 ranks compute what 1 rank does."""
    peft = "--model.init_args.peft"
    qlora = [peft, "lightft.peft.QLoRA", f"{peft}.init_args.quant_storage", "float32"]
    shards = ["--trainer.callbacks+=tests.helpers.callbacks.ShardReport",
              f"--trainer.callbacks.path={tmp_path / '_sft-fsdp2'}-shards.pt"]  # fmt: skip
    runs = {"single": traced(tmp_path, "", "single", *qlora), "fsdp2": traced(tmp_path, "", "fsdp2", *qlora, *shards)}
    assert_same_tensors(runs["fsdp2"]["grads"], runs["single"]["grads"], rtol=1e-5, atol=1e-6)
    assert_same_tensors(runs["fsdp2"]["weights"], runs["single"]["weights"], rtol=0, atol=2e-5)
    shards = torch.load(tmp_path / "_sft-fsdp2-shards.pt", weights_only=True)
    assert shards["Params4bit"]["sharded"] > 0 and shards["Params4bit"]["local"] * 2 == shards["Params4bit"]["full"]


def test_precomputed_reference_under_fsdp2_with_uneven_shares(tmp_path):
    """13 pairs over 2 ranks: 7 and 6 pairs, 4 and 3 batches of 2. Every forward of a sharded model is collective,
    so the short rank pads its pass; the precomputed reference (and so training) equals 1 rank's."""
    extra = [
        "--model.init_args.reference",
        "precomputed",
        "--data.init_args.train.max_examples",
        "13",
        "--trainer.val_check_interval",
        "2",
    ]
    runs = {strategy: traced(tmp_path, "_dpo", strategy, *extra) for strategy in ("single", "fsdp2")}
    assert_same_tensors(runs["fsdp2"]["grads"], runs["single"]["grads"], rtol=1e-5, atol=1e-6)
    assert_same_tensors(runs["fsdp2"]["weights"], runs["single"]["weights"], rtol=0, atol=2e-5)
