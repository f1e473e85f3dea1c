r"""`lightft bench --config X.yaml`: a matrix of short training runs, measured beside `lightft estimate`.

    lightft bench --config configs/sft/smollm2_lora.yaml --gradient_checkpointing false,true --batch_sizes 2,4 \
                  --steps 3 --out runs/bench

Axes (comma-separated; an axis left out keeps the config's value): `--strategies` (overlays in configs/trainer/, by
name or path), `--peft` (lightft.peft class names or class paths), `--gradient_checkpointing`, `--optimizers`,
`--batch_sizes`, `--seq_lens`, `--chunked_loss`, `--activation_offloading`, `--kernels`. Other arguments go to every
cell's `lightft fit` (e.g. `--config` overlays).

Each cell is its own `lightft fit` process of `--steps` optimizer steps of one micro-batch each (the first is warm-up;
no epoch limit) with `lightft.callbacks.BenchProbe`
(peak memory per rank: CUDA max allocated and reserved, or on CPU the training's resident-memory peak), step time,
trained tokens/s and MFU: 6N FLOPs per token for full fine-tuning, 4N with a frozen base (no weight gradients),
N = all parameters, attention's own FLOPs not counted, against the GPU's dense bf16/fp16 peak (unknown GPUs and CPUs
get none). Data: with `--synthetic true` (default) plain text packed into full rows, every token trained, the
estimate's own assumption (SFT data modules; `--synthetic false` keeps the config's data, e.g. for DPO). A failed
cell (out of memory, a refused combination) is recorded with its reason. Writes `bench.csv`, `bench.md` and
`bench.png` into `--out`.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from jsonargparse.typing import PositiveFloat

from lightft.errors import LightFTError
from lightft.memory import GIB

AXES = {  # option -> (column, how a value becomes `lightft fit` arguments, --help)
    "--strategies": ("strategy", lambda v: ["--config", _overlay(v)],
                     "trainer overlays: names of configs/trainer/*.yaml (ddp, fsdp2, ...) or paths"),
    "--peft": ("peft", lambda v: ["--model.init_args.peft", v if "." in v else f"lightft.peft.{v}"],
               "PEFT strategies: lightft.peft class names (LoRA, QLoRA, FullFineTune, ...) or class paths"),
    "--gradient_checkpointing": ("checkpointing", lambda v: ["--model.init_args.gradient_checkpointing", v],
                                 "gradient checkpointing: true, false"),
    "--optimizers": ("optimizer", lambda v: ["--model.init_args.optimizer.name", v],
                     "optimizer names (model.init_args.optimizer.name: adamw, adamw_8bit, ...)"),
    "--batch_sizes": ("batch_size", lambda v: ["--data.init_args.batch_size", v], "data.init_args.batch_size values"),
    "--seq_lens": ("seq_len", lambda v: ["--data.init_args.max_length", v], "data.init_args.max_length values"),
    "--chunked_loss": ("chunked_loss", lambda v: ["--model.init_args.compute.chunked_loss", v],
                       "chunked loss: true, false"),
    "--activation_offloading": ("offloading", lambda v: ["--model.init_args.compute.activation_offloading", v],
                                "activation offloading: true, false"),
    "--kernels": ("kernels", lambda v: ["--model.init_args.compute.kernels", v],
                  "model.init_args.compute.kernels values (torch, liger)"),
}  # fmt: skip
PEAK_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}  # dense bf16
SYNTHETIC_ROWS = 1024
WORDS = ["the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at", "from", "his"]
COLUMNS = ["cell", "status", "estimate_gib", "peak_gib", "reserved_gib", "error_pct", "step_seconds",
           "tokens_per_second", "mfu", "world_size", "device", "reason"]  # fmt: skip


def _overlay(value: str) -> str:
    path = Path(value) if value.endswith(".yaml") else Path("configs/trainer") / f"{value}.yaml"
    if not path.is_file():
        raise LightFTError(f"--strategies: no trainer overlay '{path}'; name one of configs/trainer/*.yaml.")
    return str(path)


def synthetic_text(path: Path, rows: int = SYNTHETIC_ROWS, words: int = 50) -> Path:
    """Plain-text documents (every token trained) of ~50-100 tokens, several to a packed row.

    Full packed rows with their block-diagonal attention: the case the estimate assumes.
    """
    rng = random.Random(0)
    path.write_text("".join(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(words))}) + "\n"
                            for _ in range(rows)))  # fmt: skip
    return path


def cells(axes: dict[str, list[str]]) -> list[dict[str, str]]:
    """Every combination of the given axes' values, as {column: value}."""
    names = list(axes)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*axes.values())]


def run_cell(base: list[str], cell: dict[str, str], options: dict[str, Any], out: Path) -> dict[str, Any]:
    """Estimate and measure one cell; never raises for the cell's own failure."""
    from lightft.commands.estimate import plan_and_model
    from lightft.memory import estimate

    label = ", ".join(f"{AXES[o][0]}={v}" for o, v in cell.items()) or "as configured"
    args = [*base]
    for option, value in cell.items():
        args += AXES[option][1](value)
    row: dict[str, Any] = {"cell": label, "status": "ok", "reason": ""}
    try:
        plan, model, quantization = plan_and_model(list(args))
        predicted = estimate(model, plan, quantization)
        row["estimate_gib"] = predicted.total / GIB
        n_params, trainable = predicted.params["total"], predicted.params["trainable"]
    except LightFTError as err:
        return {**row, "status": "refused", "reason": str(err)}
    name = "cell-" + "-".join(v.replace("/", "_") for v in cell.values()) if cell else "cell"
    record = out / f"{name}.json"
    record.unlink(missing_ok=True)
    probe = json.dumps({"class_path": "lightft.callbacks.BenchProbe", "init_args": {"path": str(record)}})
    # one optimizer step per batch (the optimizer's states exist from the first step on), no epoch limit, no samples
    fit = [sys.executable, "-m", "lightft.cli", "fit", *args, "--trainer.max_steps", str(options["steps"]),
           "--trainer.max_epochs", "-1", "--trainer.accumulate_grad_batches", "1",
           "--trainer.limit_val_batches", "0", "--trainer.default_root_dir", str(out / name),
           "--overwrite", "true", "--checkpoint.save_top_k", "0", "--checkpoint.save_last", "false",
           "--samples.prompts", "0", f"--trainer.callbacks+={probe}"]  # fmt: skip
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}  # CPU: freed tensors leave resident memory
    try:
        result = subprocess.run(fit, env=env, capture_output=True, text=True, timeout=options["timeout"])
    except subprocess.TimeoutExpired as err:
        (out / f"{name}.log").write_text(_text(err.stdout) + _text(err.stderr))
        return {**row, "status": "timeout", "reason": f"no result within --timeout {options['timeout']:g} s"}
    (out / f"{name}.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0 or not record.is_file():
        text = result.stderr.lower()
        oom = any(marker in text for marker in ("out of memory", "outofmemoryerror", "can't allocate"))
        status = "oom" if oom else "failed"
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        return {**row, "status": status, "reason": (lines[-1] if lines else f"exit {result.returncode}")[:300]}
    measured = json.loads(record.read_text())
    peak = measured["peak_bytes"] / GIB
    row.update(peak_gib=peak, step_seconds=measured["step_seconds"], tokens_per_second=measured["tokens_per_second"],
               world_size=measured["world_size"], device=measured["device"])  # fmt: skip
    if measured["reserved_bytes"] is not None:
        row["reserved_gib"] = measured["reserved_bytes"] / GIB
    # the estimate's CUDA context is outside max_memory_allocated: compare like with like
    compared = row["estimate_gib"] - predicted.components.get("CUDA context", 0) / GIB
    row["error_pct"] = 100 * (compared - peak) / peak if peak > 0 else None
    row["mfu"] = mfu(measured, n_params, full=trainable == n_params)
    return row


def _text(output: str | bytes | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def mfu(measured: dict[str, Any], n_params: int, full: bool) -> float | None:
    """Model FLOPs utilisation: (6N full / 4N frozen base) x tokens/s over the GPUs' dense peak; None if unknown."""
    peak = next((flops for name, flops in PEAK_FLOPS.items() if name in measured["device"]), None)
    if peak is None or not measured["tokens_per_second"]:
        return None
    return (6 if full else 4) * n_params * measured["tokens_per_second"] / (peak * measured["world_size"])


def write_outputs(rows: list[dict[str, Any]], out: Path, title: str) -> list[Path]:
    """bench.csv, bench.md and bench.png (measured vs estimated peak per cell); returns the files written.

    The tables are the results and are always written; a chart that cannot be drawn (matplotlib missing or
    failing) is reported in one line on stderr instead of losing the cells' results to a traceback.
    """
    with open(out / "bench.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: row.get(k, "") for k in COLUMNS} for row in rows)
    lines = [f"# {title}", "", "| cell | status | estimate GiB | peak GiB | error | step s | tokens/s | MFU |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for row in rows:
        cells_ = [row["cell"], row["status"] if row["status"] == "ok" else f"{row['status']}: {row['reason']}",
                  _fmt(row.get("estimate_gib"), ".3f"), _fmt(row.get("peak_gib"), ".3f"),
                  _fmt(row.get("error_pct"), "+.1f", "%"), _fmt(row.get("step_seconds"), ".2f"),
                  _fmt(row.get("tokens_per_second"), ".0f"), _fmt(row.get("mfu"), ".1%")]  # fmt: skip
        lines.append("| " + " | ".join(cells_) + " |")
    (out / "bench.md").write_text("\n".join(lines) + "\n")
    written = [out / "bench.csv", out / "bench.md"]
    try:
        _chart(rows, out / "bench.png", title)
    except Exception as err:  # the chart is a view of the tables above, never worth their loss
        fix = " (pip install matplotlib)" if isinstance(err, ImportError) else ""
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        print(f"lightft bench: {out / 'bench.png'} not drawn: {type(err).__name__}: {reason}{fix}", file=sys.stderr)
    else:
        written.append(out / "bench.png")
    return written


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    return "" if value is None or value == "" else f"{value:{spec}}{suffix}"


def _chart(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [row["cell"] for row in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows)), 4.5))
    ax.bar([i - 0.2 for i in x], [row.get("estimate_gib") or 0 for row in rows], 0.4, label="estimate")
    ax.bar([i + 0.2 for i in x], [row.get("peak_gib") or 0 for row in rows], 0.4, label="measured peak")
    for i, row in enumerate(rows):
        if row["status"] != "ok":
            ax.annotate(row["status"], (i + 0.2, 0), ha="center", va="bottom", color="red")
    ax.set_xticks(list(x), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("GiB per rank")
    ax.set_title(textwrap.fill(title, 90), fontsize=8)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_arguments(parser: Any) -> None:
    """`lightft bench`'s own options (its axes, steps, output, data, time limit), beside `lightft fit`'s."""
    for option, (_, _, text) in AXES.items():
        parser.add_argument(
            option, type=str | None, default=None, help=f"Axis, comma-separated: {text}. Left out: the config's value."
        )
    parser.add_argument(
        "--steps",
        type=int,
        default=3,
        help="Optimizer steps per cell, one micro-batch each; >= 2 (the first warms up).",
    )
    parser.add_argument(
        "--out", type=str, default="runs/bench", help="Directory of bench.csv, bench.md, bench.png and each cell's run."
    )
    parser.add_argument(
        "--synthetic",
        type=bool,
        default=True,
        help="Train on synthetic packed plain text (SFT data modules); false keeps the config's data.",
    )
    parser.add_argument(
        "--timeout",
        type=PositiveFloat,
        default=1800.0,
        help="Seconds a cell may run before it is recorded as a timeout.",
    )


def main(args: list[str]) -> None:
    """`lightft bench --config X.yaml [axes] [--steps N] [--out DIR] [--synthetic true|false] [fit args]`."""
    from tqdm import tqdm

    from lightft.commands.fit import ParseOnlyCLI

    cli = ParseOnlyCLI(args, "bench", add_arguments, __doc__, instantiate=False)
    options = cli.config
    fit_args = cli.fit_arguments(list(args))  # each cell's `lightft fit` gets them as given
    if options.steps < 2:
        raise LightFTError("--steps: needs at least 2 (the first step is warm-up, not measured).")
    axes = {}
    for option in AXES:
        value = options[option.removeprefix("--")]
        if value:
            axes[option] = [v.strip() for v in value.split(",") if v.strip()]
            for v in axes[option]:
                AXES[option][1](v)  # bad overlay names fail before any cell runs
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    title = f"lightft bench {' '.join(fit_args)}, {options.steps} steps"
    if options.synthetic:
        title += ", synthetic packed text"
        data = str(synthetic_text(out / "synthetic.jsonl"))
        fit_args += ["--data.init_args.packing", "true", "--data.init_args.train.path", data,
                     "--data.init_args.train.max_examples", str(SYNTHETIC_ROWS), "--data.init_args.val.path", data,
                     "--data.init_args.val_fraction", "0"]  # fmt: skip
    rows = []
    for cell in tqdm(cells(axes), desc="lightft bench", unit="cell"):
        rows.append(run_cell(fit_args, cell, {"steps": options.steps, "timeout": options.timeout}, out))
    written = write_outputs(rows, out, title)
    print((out / "bench.md").read_text())
    print(f"wrote {', '.join(map(str, written))}")
