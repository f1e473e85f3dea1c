"""`lightft estimate` beside a measured CPU run, per cell: the tiny model and SmolLM2-135M (LoRA, random weights from
its config), gradient checkpointing off and on.

    python benchmarks/estimate_cpu.py [--smollm2-batch 2]

Each cell runs `lightft fit` for 2 steps in its own process on plain text packed into full rows (every token
trained, the estimate's worst case) with `tests.helpers.callbacks.TrainingPeak`: peak resident memory during
training minus resident memory before the model was built, glibc's mmap threshold fixed at 64 KiB
(MALLOC_MMAP_THRESHOLD_) so freed tensors leave resident memory. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
GIB = 2**30


def text_data(path: Path, rows: int = 64, words: int = 600) -> str:
    rng = random.Random(0)
    vocab = ["the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at", "from"]
    path.write_text("".join(json.dumps({"text": " ".join(rng.choice(vocab) for _ in range(words))}) + "\n"
                            for _ in range(rows)))  # fmt: skip
    return str(path)


def cell(tmp: Path, name: str, args: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MALLOC_MMAP_THRESHOLD_": "65536"}
    lightft = [sys.executable, "-m", "lightft.cli"]
    out = subprocess.run([*lightft, "estimate", *args, "--json"], cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    estimate = json.loads(out.stdout[out.stdout.index("{") :])
    peak = tmp / f"{name}.pt"
    fit = [*lightft, "fit", *args, "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0",
           "--trainer.default_root_dir", str(tmp / name),
           f'--trainer.callbacks+={{"class_path": "tests.helpers.callbacks.TrainingPeak", "init_args": '
           f'{{"path": "{peak}"}}}}']  # fmt: skip
    run = subprocess.run(fit, cwd=ROOT, env=env, capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(run.stderr[-2000:])
    measured = torch.load(peak, weights_only=True)["measured"]
    return {"cell": name, "estimate": estimate["total_bytes"], "measured": measured, "plan": estimate["plan"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smollm2-batch", type=int, default=2)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        data = text_data(tmp / "text.jsonl")
        common = ["--data.init_args.packing", "true", "--data.init_args.train.path", data,
                  "--data.init_args.val.path", data, "--data.init_args.max_length", "512"]  # fmt: skip
        tiny = ["--config", "configs/debug/tiny.yaml", "--data.init_args.batch_size", "8", *common]
        smol = ["--config", "configs/sft/smollm2_lora.yaml", "--model.init_args.model.random_init", "true",
                "--data.init_args.batch_size", str(options.smollm2_batch), *common]  # fmt: skip
        rows = []
        for name, args in (("tiny", tiny), ("smollm2-135m-lora", smol)):
            for checkpointing in ("false", "true"):
                label = f"{name}, checkpointing {'on' if checkpointing == 'true' else 'off'}"
                rows.append(cell(tmp, label.replace(" ", "_").replace(",", ""),
                                 [*args, "--model.init_args.gradient_checkpointing", checkpointing]))  # fmt: skip
                rows[-1]["cell"] = label
                print(f"done: {label}", file=sys.stderr)
    print("| cell | batch x tokens | estimate (GiB) | measured (GiB) | error |")
    print("|---|---|---:|---:|---:|")
    for row in rows:
        plan = row["plan"]
        error = (row["estimate"] - row["measured"]) / row["measured"]
        print(f"| {row['cell']} | {plan['batch_size']} x {plan['seq_len']} | {row['estimate'] / GIB:.3f} | "
              f"{row['measured'] / GIB:.3f} | {error:+.1%} |")  # fmt: skip


if __name__ == "__main__":
    main()
