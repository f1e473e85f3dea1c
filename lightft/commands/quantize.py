"""`lightft quantize`: post-training quantization of a model lightft trained (or any base model), with a report.

The float model (a checkpoint merged, a `lightft export` directory, or a hub id / directory / GGUF file) is
evaluated on the run's validation split, quantized with the scheme (`lightft.quantization.schemes`; `int8_static`
after a calibration pass with the chosen observer), saved, reloaded with `lightft.quantization.load_quantized`,
checked against the in-memory quantized model, and evaluated again. The report (printed, and `quantization.json`
in the output) holds size on disk, validation loss / perplexity, exact match and greedy-answer agreement with the
float model. A checkpoint trained with `qat:` converts its fake-quantized layers with the scheme it trained for.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel

from lightft.checkpoints import run_checkpoint
from lightft.data.sources import DatasetSpec
from lightft.errors import LightFTError
from lightft.models.loading import ModelSpec, load_model, load_tokenizer, resolve_device, savable
from lightft.quantization import ptq
from lightft.quantization.observers import Calibration
from lightft.quantization.report import Evaluation, ValData, agreement, evaluate, run_val_spec, table
from lightft.quantization.schemes import Granularity, Mapping, QuantScheme, SchemeName

from .export import METADATA, _probe, load_exported, load_trained

REPORT = "quantization.json"


@dataclass
class FloatModel:
    """The model to quantize, where it came from, and the scheme its run trained for with QAT (if any)."""

    network: Any
    tokenizer: Any
    head: str
    qat: QuantScheme | None
    source: str
    run: str | None  # a checkpoint whose run config names the validation split


def load_float(model: str | None, ckpt: str | None, gguf_file: str | None, device: torch.device) -> FloatModel:
    """The float model to quantize: a checkpoint merged (a QAT run keeps its fake quantizers), an export (merged),
    or a base model; a model that is already quantized is refused.
    """  # noqa: D205
    if (model is None) == (ckpt is None):
        raise LightFTError(
            "give exactly one of --ckpt CHECKPOINT (a lightft run) or --model PATH (export dir, hub id)."
        )
    if ckpt is not None:
        module = load_trained(ckpt, quantize=False, device=device)
        merged = module.peft.merge(module.model)
        # a QAT run keeps its fake-quantized layers for the conversion; anything else is a plain float model
        merged = ptq.forget_gguf(merged) if module.qat is not None else savable(merged)
        return FloatModel(merged.float(), module.tokenizer, module.describe().head, module.qat, ckpt, ckpt)
    assert model is not None
    if (Path(model) / METADATA).is_file():
        if ptq.scheme_of(model) is not None:
            raise LightFTError(f"--model: '{model}' is already quantized ({ptq.scheme_of(model)['label']}); quantize "
                               "the float model it came from (its checkpoint or merged export).")  # fmt: skip
        record = json.loads((Path(model) / METADATA).read_text())
        network, tokenizer = load_exported(model, torch.float32, device)
        if isinstance(network, PeftModel):
            network = network.merge_and_unload()
        return FloatModel(network, tokenizer, record.get("head", "causal_lm"), None, model, record.get("checkpoint"))
    spec = ModelSpec(model, gguf_file=gguf_file, dtype="float32")
    tokenizer = load_tokenizer(spec, key="--model")
    network = load_model(spec, tokenizer, key="--model").to(device)
    ptq.refuse_quantized(network, "--model", model)
    return FloatModel(network, tokenizer, "causal_lm", None, model, None)


def _scheme(source: FloatModel, scheme: SchemeName | None, **knobs: Any) -> QuantScheme:
    if source.qat is None:
        return QuantScheme(scheme or "int8_weight_only", **knobs)
    if scheme not in (None, source.qat.scheme):
        raise LightFTError(f"--scheme: '{source.source}' trained with QAT for {source.qat.label()}; quantize it with "
                           f"--scheme {source.qat.scheme} (or drop --scheme), or train without qat.")  # fmt: skip
    return source.qat


def _val_data(
    source: FloatModel, data: str | None, max_length: int, examples: int, prompts: int, calibration: int
) -> ValData | None:
    spec = DatasetSpec(data) if data else run_val_spec(source.run)
    if spec is None:
        return None
    if data:
        return ValData.load(spec, "--data", source.tokenizer, max_length, examples, prompts, extra=calibration)
    try:
        return ValData.load(spec, "data.init_args.val", source.tokenizer, max_length, examples, prompts, calibration)
    except LightFTError as err:  # e.g. a DPO run's preference pairs: not examples with one answer
        print(f"note: the run's validation split cannot be read as SFT data ({err}); give --data FILE for "
              "validation loss and greedy answers", flush=True)  # fmt: skip
        return None


def quantize_float(
    source: FloatModel,
    scheme: QuantScheme,
    calibration: Calibration,
    val: ValData | None,
    float_dir: Path,
    device: torch.device,
) -> Any:
    """`source.network` quantized in place (bitsandbytes: reloaded from `float_dir`, its saved copy); a QAT run is
    converted with its scheme, `int8_static` calibrated on `val` first.
    """  # noqa: D205
    if scheme.library == "bitsandbytes":
        return ptq.quantize_bitsandbytes(float_dir, scheme, source.head, device)
    if source.qat is not None:
        from lightft.quantization import qat

        return qat.convert(source.network, scheme)
    qparams = None
    if scheme.scheme == "int8_static":
        from lightft.quantization.static import calibrate

        if val is None:
            raise LightFTError(
                "--data: int8_static calibrates on validation data; give --data FILE (any lightft format) or "
                "quantize a checkpoint whose run config names data.init_args.val."
            )
        batches, overlap = val.calibration_batches(4, calibration.examples)
        if overlap:
            print(f"note: the validation split is too small to hold {calibration.examples} calibration examples "
                  "apart from the evaluated ones; calibrating on evaluated examples", flush=True)  # fmt: skip
        qparams = calibrate(source.network, batches, calibration, scheme, key="--calibration.examples")
    return ptq.quantize_torchao(source.network, scheme, qparams)


def quantize(
    out: str,
    ckpt: str | None = None,
    model: str | None = None,
    gguf_file: str | None = None,
    run: str | None = None,
    scheme: SchemeName | None = None,
    mapping: Mapping = "symmetric",
    granularity: Granularity | None = None,
    group_size: int = 32,
    bits: int = 8,
    keep_float: list[str] | None = None,
    calibration: Calibration = Calibration(),  # noqa: B008
    data: str | None = None,
    eval_examples: int = 64,
    prompts: int = 16,
    max_new_tokens: int = 64,
    max_length: int = 512,
    batch_size: int = 8,
    overwrite: bool = False,
    device: str = "auto",
) -> dict[str, Any]:
    """Quantize a trained model after training, measure what it costs, and save it (`load_quantized(out)` loads it).

    Args:
        out: Output directory (must not exist or be empty unless --overwrite true).
        ckpt: A checkpoint written by `lightft fit` (merged before quantizing; a `qat:` run converts with its scheme),
            or `best` / `last` with `--run`.
        model: Instead of --ckpt: a `lightft export` directory, a hub id, a local model directory or `package://`.
        gguf_file: GGUF file inside `model`.
        run: A run directory (its trainer.default_root_dir): `--ckpt best` / `--ckpt last` then read its best.ckpt
            (the best validation, `best.monitor`) or last.ckpt.
        scheme: `int8_weight_only`, `int4_weight_only`, `intx_weight_only`, `int8_dynamic`, `int8_static` (calibrated
            activations), `nf4`, `fp4` or `llm_int8`; default int8_weight_only (a QAT run: the scheme it trained for).
        mapping: `symmetric` (zero point 0) or `affine` (scale and zero point).
        granularity: `per_tensor`, `per_channel` or `per_group` weight scales (default per_group for 4 bits or
            fewer, else per_channel).
        group_size: Input features per scale with per_group; must divide every quantized layer's input size.
        bits: Weight bits of intx_weight_only and int8_dynamic (2..8).
        keep_float: Layers left in float: regular expressions searched in the layer names, e.g. `mlp.down_proj`
            (the layers whose inputs carry outlier features, which per-tensor int8_static cannot hold).
        calibration: int8_static's calibration pass: observer, histogram method, examples.
        data: Validation data (any lightft format) for the report and calibration; default: the run's
            `data.init_args.val` (read from the run's config.yaml beside the checkpoint).
        eval_examples: Validation examples the loss is measured on.
        prompts: Held-out prompts answered greedily by both models (0: skip generation).
        max_new_tokens: Longest greedy answer.
        max_length: Longest encoded example.
        batch_size: Examples per forward.
        overwrite: Replace a non-empty output directory.
        device: `auto` (CUDA when present), `cpu`, `cuda[:N]`.
    """
    target = Path(out)
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise LightFTError(f"--out: '{target}' exists and is not empty; choose another directory or --overwrite true.")
    knobs = {"mapping": mapping, "granularity": granularity, "group_size": group_size, "bits": bits,
             "keep_float": tuple(keep_float or ())}  # fmt: skip
    if scheme is not None:
        QuantScheme(scheme, **knobs)  # an unknown name or knob fails before any weight loads
    if run is not None and ckpt is None:
        raise LightFTError("--run: read only with --ckpt best or --ckpt last; add one of them.")
    if ckpt is not None:
        ckpt = run_checkpoint(ckpt, run)
    where = resolve_device(device)[0]
    source = load_float(model, ckpt, gguf_file, where)
    chosen = _scheme(source, scheme, **knobs)
    chosen.check(source.network, "--group_size")
    extra = calibration.examples if chosen.scheme == "int8_static" else 0
    val = _val_data(source, data, max_length, eval_examples, prompts, extra)
    if val is not None and source.head != "causal_lm":  # a reward model has scores, not next-token logits
        if chosen.scheme == "int8_static":
            raise LightFTError("--scheme: int8_static calibrates causal LMs; quantize a reward model weight-only.")
        print("note: a reward model: the report gives sizes only (no language-model loss or generation)", flush=True)
        val = None
    staging = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        report = _run(source, chosen, calibration, val, staging, where, batch_size, max_new_tokens)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target)
    (staging / "model").rename(target)
    shutil.rmtree(staging, ignore_errors=True)
    report["out"] = str(target)
    (target / REPORT).write_text(_json(report))
    print(table(report), flush=True)
    return report


def _run(
    source: FloatModel,
    scheme: QuantScheme,
    calibration: Calibration,
    val: ValData | None,
    staging: Path,
    device: torch.device,
    batch_size: int,
    max_new_tokens: int,
) -> dict[str, Any]:
    """Evaluate the float model, quantize, save, verify the reload, evaluate again: the report."""
    ptq.save_float(source.network, source.tokenizer, staging / "float")
    source.network.eval()
    before = evaluate(source.network, source.tokenizer, val, batch_size, max_new_tokens) if val else Evaluation()
    quantized = quantize_float(source, scheme, calibration, val, staging / "float", device)
    expected = _probe(quantized).float()
    record = {"source": source.source, "head": source.head}
    ptq.save_quantized(quantized, scheme, staging / "model", record)
    source.tokenizer.save_pretrained(staging / "model")
    reloaded = ptq.load_quantized(staging / "model", device)
    got = _probe(reloaded).float()
    if not torch.allclose(got, expected, atol=1e-4, rtol=1e-4):
        raise RuntimeError(f"the saved model reloads with different logits (max diff {(got - expected).abs().max()})")
    after = evaluate(reloaded, source.tokenizer, val, batch_size, max_new_tokens) if val else Evaluation()
    return {
        "scheme": scheme.label(),
        "source": source.source,
        "size_mb": {
            "float": ptq.weight_bytes(staging / "float") / 1e6,
            "quantized": ptq.weight_bytes(staging / "model") / 1e6,
        },
        "stored_dtypes": sorted(set(ptq.stored_dtypes(reloaded).values())),
        "float": before.summary(),
        "quantized": after.summary(),
        "greedy_agreement": agreement(before, after),
        "prompts": len(before.completions),
        "completions": [
            {"float": a, "quantized": b} for a, b in zip(before.completions, after.completions, strict=True)
        ],
    }


def _json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False)
