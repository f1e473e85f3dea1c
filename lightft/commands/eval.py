"""`lightft eval`: a model on a held-out file -> per-example predictions, summary figures and a printed table.

The model is anything `lightft generate` loads (a checkpoint, an export, a quantized directory, a hub id or
directory, `package://NAME`, a GGUF file, base + adapter); the data any lightft dataset format. Figures: exact
match, ROUGE-L, BLEU and chrF (torchmetrics), JSON validity / exact record / field match when the answers are JSON
objects, validation loss and perplexity, a rule reward (`--reward CLASS`) and a reward model's score
(`--reward_model DIR`), the KL to a reference model (`--reference`, e.g. the SFT model), and lm-eval harness tasks
when `lm-eval` is installed. `--compare OTHER` evaluates a second model on the same prompts, side by side.
`--out DIR` receives `predictions.jsonl` (one row per example: prompt, completion, reference, figures),
`compare_predictions.jsonl` and `summary.json`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Literal

import torch

from lightft.checkpoints import run_checkpoint
from lightft.data.sources import DatasetSpec
from lightft.errors import LightFTError
from lightft.evaluation.run import EvalSettings, evaluate_model
from lightft.generation import GenerationSettings
from lightft.models.loading import resolve_device
from lightft.rl.rewards import RewardFunction, RewardModelScorer

from .generate import load_inference_model

PREDICTIONS, COMPARE_PREDICTIONS, SUMMARY = "predictions.jsonl", "compare_predictions.jsonl", "summary.json"
Metric = Literal["exact_match", "rouge_l", "bleu", "chrf", "json_valid", "json_exact", "field_match", "loss"]
ORDER = (
    "examples", "exact_match", "rouge_l", "bleu", "chrf", "json_valid", "json_exact", "field_match", "loss",
    "perplexity", "reward", "reward_model", "kl_to_reference", "tokens_per_second",
)  # fmt: skip


def evaluate(
    model: str,
    data: str | DatasetSpec,
    out: str | None = None,
    adapter: str | None = None,
    gguf_file: str | None = None,
    run: str | None = None,
    compare: str | None = None,
    reference: str | None = None,
    reward: RewardFunction | None = None,
    reward_model: str | None = None,
    metrics: list[Metric] | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 128,
    max_prompt_length: int = 1024,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    samples: int = 1,
    seed: int = 0,
    lm_eval_tasks: list[str] | None = None,
    lm_eval_include: str | None = None,
    lm_eval_limit: int | None = None,
    device: str = "auto",
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Evaluate a model (and optionally a second one beside it) on a held-out dataset file.

    Args:
        model: A checkpoint (`.ckpt`), a `lightft export` / `lightft quantize` directory, a hub id or directory,
            `package://NAME`, a `.gguf` file, or `best` / `last` with `--run`.
        data: The held-out file (any lightft format; `--data.path F --data.format F --data.columns ...` too).
        out: Directory for `predictions.jsonl`, `summary.json` (and `compare_predictions.jsonl`).
        adapter: A peft adapter directory to apply to `model`.
        gguf_file: GGUF file inside `model`.
        run: A run directory (its trainer.default_root_dir): `--model best` / `--model last` then read its best.ckpt
            (the best validation, `best.monitor`) or last.ckpt.
        compare: A second model (same forms as `model`) evaluated on the same prompts, side by side.
        reference: A model to measure the KL to (e.g. the SFT model a preference-tuned policy started from).
        reward: A rule reward scoring each answer, by class path (`lightft.rl.rewards.JSONMatchReward`).
        reward_model: A reward model directory (`lightft export --merge true` of a reward model run).
        metrics: Reference metrics that must be computed (an error when the file has no answers); default: every
            metric that applies.
        limit: Evaluate the first N examples.
        batch_size: Prompts generated together.
        max_new_tokens: Longest answer in tokens.
        max_prompt_length: Generation budget for a prompt; a longer prompt is an error.
        do_sample: Sample instead of greedy decoding.
        temperature: Sampling temperature.
        top_p: Nucleus sampling mass.
        samples: Completions per prompt (with `--do_sample true`); the figures are then means over all samples:
            the sampled policy's rates rather than one decode's.
        seed: Random seed (sampling).
        lm_eval_tasks: lm-evaluation-harness tasks to run on the same model object (needs `lightft[eval]`).
        lm_eval_include: A directory of extra harness task YAML files (local tasks).
        lm_eval_limit: At most N examples per harness task.
        device: `auto` (CUDA when present, else CPU), `cpu`, `cuda` or `cuda:N`.
        dtype: Weight and compute dtype; `auto` is bfloat16 on CUDA and float32 on CPU.
        overwrite: Replace the results in a non-empty `out`.

    Returns:
        The summary (also written to `out/summary.json`).
    """
    model = run_checkpoint(model, run, "--model")
    spec = data if isinstance(data, DatasetSpec) else DatasetSpec(data)
    if samples < 1 or (samples > 1 and not do_sample):
        raise LightFTError(f"--samples {samples}: give 1, or more than 1 together with --do_sample true.")
    _check_out(out, overwrite)
    if lm_eval_tasks:
        _lm_eval_available()
    torch.manual_seed(seed)
    target, weights = resolve_device(device, dtype)
    settings = EvalSettings(
        limit, batch_size, max_prompt_length, GenerationSettings(max_new_tokens, do_sample, temperature, top_p),
        tuple(metrics) if metrics else None, samples=samples,
    )  # fmt: skip
    scorer = RewardModelScorer(reward_model) if reward_model else None
    reference_net = (
        load_inference_model(reference, None, None, target, weights, "--reference")[0] if reference else None
    )
    results = {}
    for name, (path, gguf, extra) in {"model": (model, gguf_file, adapter), "compare": (compare, None, None)}.items():
        if path is None:
            continue
        network, tokenizer = load_inference_model(path, gguf, extra, target, weights, f"--{name}")
        print(f"evaluating {path} on {spec.path} ({target}, {str(weights).removeprefix('torch.')})", flush=True)
        report = evaluate_model(network, tokenizer, spec, settings, reward, scorer, reference_net)
        report.summary["model"] = path
        if lm_eval_tasks:
            report.summary["lm_eval"] = run_lm_eval(network, tokenizer, lm_eval_tasks, lm_eval_include,
                                                    lm_eval_limit, batch_size)  # fmt: skip
        results[name] = report
        del network
    summary = {name: report.summary for name, report in results.items()} | {"data": spec.path}
    print(table(summary), flush=True)
    if out:
        _write(Path(out), results, summary)
    return summary


def _check_out(out: str | None, overwrite: bool) -> None:
    if out and Path(out).exists() and any(Path(out).iterdir()) and not overwrite:
        raise LightFTError(f"--out: '{out}' is not empty; pick another directory or pass --overwrite true.")


def _write(out: Path, results: dict[str, Any], summary: dict[str, Any]) -> None:
    """Write into a staging directory beside `out`, then swap it in (a failed write leaves `out` as it was)."""
    staging = out.with_name(out.name + ".writing")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, report in results.items():
        with open(staging / (PREDICTIONS if name == "model" else COMPARE_PREDICTIONS), "w", encoding="utf-8") as f:
            for row in report.rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    (staging / SUMMARY).write_text(json.dumps(summary, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    print(f"wrote {out / PREDICTIONS} and {out / SUMMARY}")


def table(summary: dict[str, Any]) -> str:
    """The summary's figures as aligned rows, one column per model."""
    columns = [name for name in ("model", "compare") if name in summary]
    names = [m for m in ORDER if any(m in summary[c] for c in columns)]
    lines = [f"{'':<20}" + "".join(f"{c:>14}" for c in columns)]
    for metric in names:
        cells = []
        for column in columns:
            value = summary[column].get(metric)
            cells.append("-" if value is None else (str(value) if isinstance(value, int) else f"{value:.4f}"))
        lines.append(f"{metric:<20}" + "".join(f"{cell:>14}" for cell in cells))
    for column in columns:
        for task, figures in (summary[column].get("lm_eval") or {}).items():
            shown = ", ".join(f"{k} {v:.4f}" for k, v in figures.items() if isinstance(v, float))
            lines.append(f"lm-eval {task} ({column}): {shown}")
    return "\n".join(lines)


def _lm_eval_available() -> None:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise LightFTError(
            "--lm_eval_tasks: lm-evaluation-harness is not installed; pip install 'lightft[eval]' (lm-eval)."
        ) from None


def run_lm_eval(
    network: Any, tokenizer: Any, tasks: list[str], include: str | None, limit: int | None, batch_size: int
) -> dict[str, dict[str, Any]]:
    """lm-evaluation-harness tasks on the loaded model object (no second load): each task's figures."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    harness = HFLM(pretrained=network, tokenizer=tokenizer, batch_size=batch_size)
    manager = TaskManager(include_path=include) if include else TaskManager()
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise LightFTError(f"--lm_eval_tasks: unknown task {unknown[0]!r}; give a harness task name or a local task "
                           "YAML directory with --lm_eval_include.")  # fmt: skip
    output = simple_evaluate(model=harness, tasks=tasks, task_manager=manager, limit=limit, log_samples=False)
    return {task: dict(figures) for task, figures in output["results"].items()}
