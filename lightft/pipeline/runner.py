"""Running a pipeline: each stage in order, finished ones skipped, a killed one resumed from its last checkpoint.

A stage is finished when `<root>/<stage>/stage.json` exists (written last, atomically). Rerunning with a changed
definition of a finished stage is refused: delete its directory to rerun it. A training stage whose directory holds
`checkpoints/last.ckpt` but no `stage.json` was killed: it resumes from that checkpoint (`--ckpt_path`), then
exports. Every trained stage is assessed on the pipeline's held-out data (`eval:`) when it finishes, and the
pipeline prints and writes (`<root>/results.json`, `<root>/results.md`) one table: per stage, the held-out
figures and the KL to the reference stage's model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from lightft.errors import LightFTError
from lightft.evaluation.run import EvalSettings, evaluate_model
from lightft.generation import GenerationSettings
from lightft.models.loading import ModelSpec, load_tokenizer, resolve_device
from lightft.pipeline.config import PipelineConfig, Stage, references, resolve
from lightft.pipeline.pairs import generate_pairs, prompt_items
from lightft.rl.rewards import RewardModelScorer

RECORD, EXPORT, PAIRS = "stage.json", "export", "pairs.jsonl"
COLUMNS = ("reward", "reward_model", "json_valid", "field_match", "exact_match", "loss", "kl_to_reference")
SAMPLED = ("reward", "reward_model", "json_valid", "field_match", "kl_to_reference")  # of the sampled policy
ALL_COLUMNS = COLUMNS + tuple(f"sampled/{name}" for name in SAMPLED)


def definition(config: PipelineConfig, stage: Stage) -> str:
    """A digest of what a stage is: its fields set away from their defaults and its training config file's text (so
    an option added to lightft later, at its default, does not make finished stages look changed).
    """  # noqa: D205
    defaults = {f.name: f.default for f in dataclasses.fields(Stage) if f.default is not dataclasses.MISSING}
    given = {k: v for k, v in dataclasses.asdict(stage).items() if k not in defaults or v != defaults[k]}
    parts = json.dumps({k: v for k, v in given.items() if v != {}}, sort_keys=True, default=str)
    if stage.config:
        parts += Path(stage.config).read_text()
    return hashlib.sha256(parts.encode()).hexdigest()[:16]


def run(config: PipelineConfig) -> list[dict[str, Any]]:
    """Run every stage not finished yet; return each stage's record (the table's rows)."""
    _check_finished(config)
    outputs: dict[str, str] = {}
    records = []
    for stage in config.stages:
        path = config.directory(stage) / RECORD
        if path.is_file():
            record = json.loads(path.read_text())
            print(f"[pipeline] {stage.name}: finished earlier ({record['seconds']:.0f} s), skipped", flush=True)
        else:
            print(f"[pipeline] {stage.name}: {stage.kind} -> {config.directory(stage)}", flush=True)
            start = time.perf_counter()
            record = _run_stage(config, stage, outputs)
            record.update(name=stage.name, kind=stage.kind, definition=definition(config, stage))
            record["seconds"] = time.perf_counter() - start
            _write_json(path, record)
        outputs[stage.name] = record["output"]
        records.append(record)
    text = table(records)
    print(text, flush=True)
    _write_json(config.root / "results.json", records)
    (config.root / "results.md").write_text(text + "\n")
    return records


def _check_finished(config: PipelineConfig) -> None:
    for stage in config.stages:
        path = config.directory(stage) / RECORD
        if path.is_file() and json.loads(path.read_text()).get("definition") != definition(config, stage):
            raise LightFTError(f"{config.source}: stage '{stage.name}' finished with another definition (its config "
                               f"or keys changed); delete {config.directory(stage)} to rerun it.")  # fmt: skip


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=2, default=str))
    partial.replace(path)


def _run_stage(config: PipelineConfig, stage: Stage, outputs: dict[str, str]) -> dict[str, Any]:
    if stage.trained:
        output, logged = _train(config, stage, outputs)
        record: dict[str, Any] = {"output": output, "val": logged}
        if config.eval is not None and stage.kind != "reward_model":  # a reward model does not answer prompts
            ours = {**outputs, stage.name: output}  # the reference stage itself: KL 0
            record["eval"] = _assess(config, output, None, ours, config.directory(stage) / "eval")
        return record
    if stage.kind == "generate_pairs":
        return _pairs(config, stage, outputs)
    model = resolve(stage.model, outputs)
    directory = config.directory(stage)
    return {"output": str(directory), "eval": _assess(config, model, stage, outputs, directory)}


def fit_arguments(config: PipelineConfig, stage: Stage, outputs: dict[str, str]) -> list[str]:
    """`lightft fit` words of a training stage: its config, its run directory and the keys taken from earlier
    stages (`model` -> the base/policy, `train`/`val` -> data, `reward_model` -> the PPO reward, `set`).
    """  # noqa: D205
    directory = config.directory(stage)
    keys: dict[str, Any] = {}
    if stage.model:
        keys["model.init_args.model.path"] = stage.model
        keys["model.init_args.model.gguf_file"] = stage.gguf_file
        keys["model.init_args.model.random_init"] = False  # a debug config's random weights: not for a trained model
    if stage.train:
        keys["data.init_args.train"] = stage.train
    if stage.val:
        keys["data.init_args.val"] = stage.val
    if stage.reward_model:
        keys["model.init_args.reward"] = {"class_path": "lightft.rl.rewards.RewardModelScorer",
                                          "init_args": {"path": stage.reward_model}}  # fmt: skip
    keys.update(stage.set)
    words = ["fit", "--config", str(stage.config), "--trainer.default_root_dir", str(directory)]
    for key, value in resolve(keys, outputs).items():
        words += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    last = directory / "checkpoints" / "last.ckpt"
    if last.exists():  # killed inside this stage: resume where it stopped
        words += ["--ckpt_path", str(last)]
    return words


def _train(config: PipelineConfig, stage: Stage, outputs: dict[str, str]) -> tuple[str, dict[str, float]]:
    """Fit (or resume) a training stage and export it merged; its export and last validation figures."""
    from lightft.commands.export import export
    from lightft.commands.fit import LightFTCLI

    words = fit_arguments(config, stage, outputs)
    if stage.reward_model:
        _same_tokenizer(config, stage, outputs)
    if "--ckpt_path" in words:
        print(f"[pipeline] {stage.name}: resuming from {words[-1]}", flush=True)
    argv, sys.argv = sys.argv, sys.argv[:1]  # the stage's words are the whole command line of its fit
    try:
        cli = LightFTCLI(args=words)
    finally:
        sys.argv = argv
    directory = config.directory(stage)
    export(str(directory / "checkpoints" / "last.ckpt"), str(directory / EXPORT), merge=True, overwrite=True)
    logged = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/") and v.numel() == 1}
    return str(directory / EXPORT), logged


def _same_tokenizer(config: PipelineConfig, stage: Stage, outputs: dict[str, str]) -> None:
    """PPO scores the policy's text with the reward model: their tokenizers must agree (same vocabulary)."""
    policy = resolve(stage.model, outputs) if stage.model else None
    reward = resolve(stage.reward_model, outputs)
    if policy is None:
        return
    ours = load_tokenizer(ModelSpec(policy, gguf_file=stage.gguf_file), key=f"stage '{stage.name}'.model")
    theirs = load_tokenizer(ModelSpec(reward), key=f"stage '{stage.name}'.reward_model")
    if ours.get_vocab() != theirs.get_vocab() or ours.eos_token != theirs.eos_token:
        raise LightFTError(f"{config.source}: stage '{stage.name}'.reward_model: '{reward}' has a different tokenizer "
                           f"({len(theirs)} tokens) from the policy '{policy}' ({len(ours)}); train the reward model "
                           "from the policy's base.")  # fmt: skip


def _reward(spec: dict[str, Any] | None, reward_model: str | None) -> Any:
    from lightft.commands.export import _import

    if reward_model:
        return RewardModelScorer(reward_model)
    if spec is None:
        return None
    return _import(spec["class_path"])(**(spec.get("init_args") or {}))


def _pairs(config: PipelineConfig, stage: Stage, outputs: dict[str, str]) -> dict[str, Any]:
    from lightft.commands.generate import load_inference_model
    from lightft.data.sources import DatasetSpec

    device, dtype = resolve_device()
    model, tokenizer = load_inference_model(resolve(stage.model, outputs), stage.gguf_file, None, device, dtype)
    reward = _reward(resolve(stage.reward, outputs), resolve(stage.reward_model, outputs))
    if isinstance(reward, RewardModelScorer):
        reward.to(device)
    items = prompt_items(DatasetSpec(stage.prompts), f"stage '{stage.name}'.prompts", tokenizer, stage.limit)
    settings = GenerationSettings(stage.max_new_tokens, do_sample=True, temperature=stage.temperature)
    out = config.directory(stage) / PAIRS
    stats = generate_pairs(model, tokenizer, items, reward, out, stage.samples, settings, stage.batch_size)
    print(f"[pipeline] {stage.name}: {stats.pairs} pairs from {stats.prompts} prompts x {stage.samples} samples "
          f"(mean reward {stats.mean_reward:.3f})", flush=True)  # fmt: skip
    if stats.pairs == 0:
        raise LightFTError(f"{config.source}: stage '{stage.name}': every prompt's {stage.samples} samples scored "
                           "the same, no pairs; raise samples or temperature.")  # fmt: skip
    return {"output": str(out), "pairs": stats.summary()}


def _assess(
    config: PipelineConfig, model: str, stage: Stage | None, outputs: dict[str, str], out: Path
) -> dict[str, Any] | None:
    """The pipeline's held-out figures of `model` (predictions written to `out/predictions.jsonl`)."""
    from lightft.commands.generate import load_inference_model
    from lightft.data.sources import DatasetSpec

    spec = config.eval
    if spec is None:
        return None
    device, dtype = resolve_device()
    network, tokenizer = load_inference_model(model, stage.gguf_file if stage else None, None, device, dtype)
    reference = outputs.get(spec.reference) if spec.reference else None
    reference_net = None
    if reference is not None and reference != model:
        reference_net = load_inference_model(reference, None, None, device, dtype, key="eval.reference")[0]
    settings = EvalSettings(spec.limit, spec.batch_size, 1024, GenerationSettings(spec.max_new_tokens), key="eval.data")
    ready = spec.reward_model and all(name in outputs for name in references(spec.reward_model))
    scorer = RewardModelScorer(resolve(spec.reward_model, outputs)) if ready else None  # once its stage has run
    reward = _reward(spec.reward, None)
    report = evaluate_model(network, tokenizer, DatasetSpec(spec.data), settings, reward, scorer, reference_net)
    summary, rows = report.summary, {"predictions.jsonl": report.rows}
    if spec.samples:  # the sampled policy: what PPO optimises and pairs are drawn from
        torch.manual_seed(spec.seed)
        generation = GenerationSettings(spec.max_new_tokens, do_sample=True, temperature=spec.temperature)
        sampled = dataclasses.replace(settings, generation=generation, samples=spec.samples)
        extra = evaluate_model(network, tokenizer, DatasetSpec(spec.data), sampled, reward, scorer, reference_net)
        summary.update({f"sampled/{k}": extra.summary[k] for k in SAMPLED if k in extra.summary})
        rows["sampled_predictions.jsonl"] = extra.rows
    if reference == model:  # the reference stage itself
        summary.update({"kl_to_reference": 0.0} | ({"sampled/kl_to_reference": 0.0} if spec.samples else {}))
    shown = ", ".join(f"{k} {summary[k]:.4f}" for k in ALL_COLUMNS if summary.get(k) is not None)
    print(f"[pipeline] held-out ({summary['examples']} examples) {model}: {shown}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    for name, values in rows.items():
        (out / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in values))
    del network, reference_net
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return summary


def table(records: list[dict[str, Any]]) -> str:
    """One row per stage: its kind, minutes, and held-out figures (pairs stages: pairs written)."""
    shown = [c for c in ALL_COLUMNS if any(c in (r.get("eval") or {}) for r in records)]
    widths = [max(10, len(c) + 2) for c in shown]
    header = f"{'stage':<14}{'kind':<16}{'min':>6}" + "".join(f"{c:>{w}}" for c, w in zip(shown, widths, strict=True))
    lines = [header]
    for record in records:
        figures = record.get("eval") or {}
        cells = "".join(
            f"{figures[c]:>{w}.4f}" if figures.get(c) is not None else f"{'-':>{w}}"
            for c, w in zip(shown, widths, strict=True)
        )
        if record["kind"] == "generate_pairs":
            pairs = record["pairs"]
            cells = (
                f"  {pairs['pairs']} pairs / {pairs['prompts']} prompts, mean sample reward {pairs['mean_reward']:.3f}"
            )
        elif record["kind"] == "reward_model" and "val/accuracy" in record.get("val", {}):
            cells = f"  held-out pair accuracy {record['val']['val/accuracy']:.3f}"
        lines.append(f"{record['name']:<14}{record['kind']:<16}{record['seconds'] / 60:>6.1f}{cells}")
    return "\n".join(lines)
