"""What each quantization scheme costs on the quickstart task: size, validation loss, exact-JSON accuracy, speed.

SmolLM2-135M-Instruct fine-tuned with LoRA on the quickstart coffee orders (configs/quickstart.yaml, fp32, CPU),
merged, then quantized by every scheme lightft offers; two more runs train the same recipe with `qat:` for int4
(group 32) and int8-dynamic and convert. Every row is the saved model reloaded (`load_quantized`, or transformers'
`gguf_file=` for GGUF) and evaluated on the same data: validation loss on the first `--eval_examples` validation
examples (the loss `lightft fit` logs), exact-JSON accuracy and greedy tokens/s on the first `--prompts` held-out
orders (the quickstart's before/after prompts); static PTQ calibrates on the validation examples after those.

    python benchmarks/quantization.py [--runs runs/bench-quant] [--tiny]

`--tiny` runs the whole pipeline on the test suite's tiny random model in about a minute (a smoke test, no figures).
Training runs are reused when their checkpoint exists, and measured rows when `<runs>/rows/<row>.json` exists (a
rerun after a failure keeps them); delete `--runs` to start over.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from lightft.commands.quantize import FloatModel, load_float, quantize_float  # noqa: E402
from lightft.quantization import ptq  # noqa: E402
from lightft.quantization.observers import Calibration  # noqa: E402
from lightft.quantization.report import ValData, evaluate, run_val_spec  # noqa: E402
from lightft.quantization.schemes import QuantScheme  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PTQ = {  # row name -> (scheme, calibration)
    "int8 weight-only": (QuantScheme("int8_weight_only"), None),
    "int8 dynamic": (QuantScheme("int8_dynamic"), None),
    "int4 weight-only g32": (QuantScheme("int4_weight_only", group_size=32), None),
    "int4 weight-only g32 affine": (QuantScheme("int4_weight_only", group_size=32, mapping="affine"), None),
    "NF4 (bitsandbytes)": (QuantScheme("nf4"), None),
    "LLM.int8 (bitsandbytes)": (QuantScheme("llm_int8"), None),
    "int8 static, minmax": (QuantScheme("int8_static"), Calibration("minmax")),
    "int8 static, moving-average minmax": (QuantScheme("int8_static"), Calibration("moving_average_minmax")),
    "int8 static, histogram mse": (QuantScheme("int8_static"), Calibration("histogram", method="mse")),
    "int8 static, histogram entropy": (QuantScheme("int8_static"), Calibration("histogram", method="entropy")),
    "int8 static, histogram p99.99": (QuantScheme("int8_static"), Calibration("histogram", method="percentile")),
    "int8 static, minmax, down_proj float": (
        QuantScheme("int8_static", keep_float=("mlp.down_proj",)),
        Calibration("minmax"),
    ),
    "int8 static, histogram mse, down_proj float": (
        QuantScheme("int8_static", keep_float=("mlp.down_proj",)),
        Calibration("histogram", method="mse"),
    ),
}
QAT = {  # row name -> (run name, the PTQ row it is compared with)
    "QAT -> int4 weight-only g32": ("qat-int4", "int4 weight-only g32"),
    "QAT -> int8 dynamic": ("qat-int8", "int8 dynamic"),
}
QAT_FLAGS = {
    "qat-int4": ["--model.init_args.qat.scheme", "int4_weight_only", "--model.init_args.qat.group_size", "32"],
    "qat-int8": ["--model.init_args.qat.scheme", "int8_dynamic"],
}


def fit(runs: Path, name: str, extra: list[str], tiny: bool) -> Path:
    """Train the quickstart recipe (reused when its last checkpoint exists); its last checkpoint."""
    run = runs / name
    ckpt = run / "checkpoints" / "last.ckpt"
    if ckpt.is_file():
        return ckpt
    config = ["--config", "configs/quickstart.yaml"] if not tiny else ["--config", "configs/debug/tiny.yaml"]
    command = [sys.executable, "-m", "lightft.cli", "fit", *config, "--trainer.default_root_dir", str(run), *extra]
    if tiny:
        command += ["--trainer.max_steps", "4"]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    print(f"trained {name} in {time.perf_counter() - start:.0f} s", flush=True)
    return ckpt


def measure(network: Any, tokenizer: Any, directory: Path, val: ValData, args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate a reloaded model; its size on disk."""
    result = evaluate(network, tokenizer, val, args.batch_size, args.max_new_tokens)
    return {"size_mb": ptq.weight_bytes(directory) / 1e6, **result.summary(), "completions": result.completions}


def quantized_row(
    source: FloatModel,
    scheme: QuantScheme,
    calibration: Calibration | None,
    val: ValData,
    out: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Quantize a copy of the float model as `lightft quantize` does, save it, reload it, evaluate it."""
    start = time.perf_counter()
    copy_ = dataclasses.replace(source, network=copy.deepcopy(source.network))
    settings = calibration or Calibration(examples=args.calibration_examples)
    network = quantize_float(copy_, scheme, settings, val, args.runs / "float-merged", torch.device("cpu"))
    ptq.save_quantized(network, scheme, out, {"source": source.source, "head": "causal_lm"})
    seconds = time.perf_counter() - start
    reloaded = ptq.load_quantized(out)
    return {"scheme": scheme.label(), "quantize_s": seconds, **measure(reloaded, source.tokenizer, out, val, args)}


def gguf_row(source: FloatModel, quant: str, val: ValData, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Write a GGUF file of the merged model, load it back with transformers (dequantized), evaluate it."""
    from transformers import AutoModelForCausalLM

    from lightft.quantization.gguf import write_gguf

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"model-{quant}.gguf"
    write_gguf(copy.deepcopy(source.network), source.tokenizer, path, quant)
    reloaded = AutoModelForCausalLM.from_pretrained(out, gguf_file=path.name, dtype=torch.float32).eval()
    row = measure(reloaded, source.tokenizer, out, val, args)
    row["note"] = "tokens/s: transformers on the dequantized weights (llama.cpp is not installed here)"
    return {"scheme": f"gguf {quant}", **row}


def qat_row(args: argparse.Namespace, run: str, val: ValData) -> dict[str, Any]:
    """Train the recipe with `qat:` (reused when done), convert with its scheme, evaluate."""
    source = load_float(None, str(fit(args.runs, run, QAT_FLAGS[run], args.tiny)), None, torch.device("cpu"))
    assert source.qat is not None
    return quantized_row(source, source.qat, None, val, args.runs / run / "quantized", args)


def cached(args: argparse.Namespace, name: str, measure_row: Any) -> dict[str, Any]:
    """A row measured once per `--runs` directory (a rerun after a failure keeps the finished rows)."""
    path = args.runs / "rows" / f"{name.replace(' ', '_').replace('/', '-')}.json"
    if path.is_file():
        return json.loads(path.read_text())
    row = measure_row()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row, indent=2))
    print(name, {k: v for k, v in row.items() if k != "completions"}, flush=True)
    return row


@torch.no_grad()
def activation_outliers(network: Any, val: ValData, top: int = 3) -> dict[str, Any]:
    """Why one int8 scale per activation tensor fails: per quantized layer, max |x| over its inputs and the ratio to
    their 99.9th percentile, on the evaluated validation examples (real tokens only).
    """  # noqa: D205
    from lightft.quantization.schemes import quantizable_linears
    from lightft.quantization.static import real_tokens

    seen: dict[str, list[torch.Tensor]] = {}
    mask: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Any:
        return lambda module, args: seen.setdefault(name, []).append(real_tokens(args[0], mask["now"]).abs().flatten())

    hooks = [layer.register_forward_pre_hook(hook(name)) for name, layer in quantizable_linears(network)]
    try:
        for batch in val.batches(4):
            mask["now"] = batch.attention_mask.bool()
            network(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    finally:
        for handle in hooks:
            handle.remove()
    ratios = {}
    for name, values in seen.items():
        x = torch.cat(values)
        ratios[name] = (x.max().item(), x.max().item() / torch.quantile(x[:: max(1, x.numel() // 2**24)], 0.999).item())
    worst = sorted(ratios, key=lambda n: -ratios[n][1])[:top]
    median = float(torch.tensor([r for _, r in ratios.values()]).median())
    return {"layers": len(ratios), "median_max_over_p99.9": median, "worst": {n: ratios[n] for n in worst}}


def markdown(rows: dict[str, dict[str, Any]], reference: list[str]) -> str:
    """The results table (markdown)."""
    lines = [
        "| model | size MB | val loss | exact-JSON | agreement with float | tokens/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        agree = sum(a == b for a, b in zip(row["completions"], reference, strict=True)) / max(1, len(reference))
        lines.append(
            f"| {name} | {row['size_mb']:.1f} | {row['loss']:.4f} | {row['exact_match']:.3f} | {agree:.3f} | "
            f"{row['tokens_per_second']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench-quant")
    parser.add_argument("--eval_examples", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--calibration_examples", type=int, default=32)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--only", nargs="*", help="row names to run (default: all)")
    parser.add_argument("--tiny", action="store_true", help="smoke test on the tiny random model")
    args = parser.parse_args()
    torch.manual_seed(0)
    args.runs.mkdir(parents=True, exist_ok=True)
    ckpt = fit(args.runs, "float", [], args.tiny)
    source = load_float(None, str(ckpt), None, torch.device("cpu"))
    spec = run_val_spec(ckpt)
    assert spec is not None, f"{ckpt}'s run config names no validation split"
    val = ValData.load(spec, "data.init_args.val", source.tokenizer, 512, args.eval_examples, args.prompts,
                       extra=args.calibration_examples)  # fmt: skip
    ptq.save_float(source.network, source.tokenizer, args.runs / "float-merged")
    rows: dict[str, dict[str, Any]] = {}
    float_dir = args.runs / "float-merged"
    base = cached(args, "float", lambda: measure(source.network.eval(), source.tokenizer, float_dir, val, args))
    rows["float (fp32, LoRA merged)"] = {"scheme": "float32", **base}
    wanted = set(args.only or [*PTQ, "gguf q8_0", "gguf q4_0", *QAT])
    for name, (scheme, calibration) in PTQ.items():
        if name in wanted:
            if calibration is not None:
                calibration = Calibration(**{**calibration.__dict__, "examples": args.calibration_examples})
            out = args.runs / name.replace(" ", "_")
            rows[name] = cached(args, name, lambda: quantized_row(source, scheme, calibration, val, out, args))  # noqa: B023
    for quant in ("q8_0", "q4_0"):
        if f"gguf {quant}" in wanted:
            out = args.runs / f"gguf-{quant}"
            rows[f"GGUF {quant}"] = cached(args, f"gguf {quant}", lambda: gguf_row(source, quant, val, out, args))  # noqa: B023
    for name, (run, _) in QAT.items():
        if name in wanted:
            rows[name] = cached(args, name, lambda: qat_row(args, run, val))  # noqa: B023
    table = markdown(rows, base["completions"])
    outliers = activation_outliers(source.network.eval(), val)
    table += "\n\nInputs of the quantized layers (float model, evaluated examples): max |x| / 99.9th percentile, "
    table += f"median over {outliers['layers']} layers {outliers['median_max_over_p99.9']:.1f}; largest: "
    table += "; ".join(f"{n} max {m:.0f}, ratio {r:.0f}" for n, (m, r) in outliers["worst"].items())
    print(table)
    (args.runs / "results.json").write_text(json.dumps(rows, indent=2))
    (args.runs / "results.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
