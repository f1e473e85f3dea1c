"""A pipeline config: named stages, each an ordinary lightft config plus the paths it takes from earlier stages.

    root: runs/rlhf                # stage `x` writes into <root>/x
    eval: {data: val.jsonl, reward: {class_path: ...}, reference: sft}   # every trained stage is assessed on it
    stages:
      - {name: sft, kind: sft, config: configs/pipeline/rlhf/sft.yaml}
      - {name: pairs, kind: generate_pairs, model: ${sft}, prompts: prompts.jsonl, reward: {class_path: ...}}
      - {name: rm, kind: reward_model, config: rm.yaml, model: ${sft}, train: ${pairs}}
      - {name: ppo, kind: ppo, config: ppo.yaml, model: ${sft}, reward_model: ${rm}}

`${name}` is the output of stage `name`: a trained stage's merged export, `generate_pairs`' pairs file, an `eval`
stage's directory. Everything is checked before the first stage runs: one line naming the stage and key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from lightft.errors import LightFTError

TRAINED = {"sft": "SFTModule", "reward_model": "RewardModelModule", "ppo": "PPOModule", "dpo": "DPOModule",
           "orpo": "DPOModule"}  # fmt: skip
KINDS = (*TRAINED, "eval", "generate_pairs")
REFERENCE = re.compile(r"\$\{([A-Za-z_][\w-]*)\}")


@dataclass
class Stage:
    """One stage.

    Args:
        name: Unique name; its outputs go to `<root>/<name>` and later stages name them `${name}`.
        kind: `sft`, `reward_model`, `ppo`, `dpo`, `orpo` (a training run), `eval` or `generate_pairs`.
        config: The lightft fit config of a training stage.
        model: The starting model: for a training stage its base (the policy for ppo / dpo / orpo); the model an
            `eval` stage assesses or a `generate_pairs` stage samples from.
        gguf_file: GGUF file inside `model` (a model given by path).
        train: A training stage's training data (`data.init_args.train`).
        val: A training stage's validation data (`data.init_args.val`).
        reward_model: A reward model directory (ppo: becomes the reward; generate_pairs / eval: ranks / scores).
        reward: A rule reward `{class_path, init_args}` (generate_pairs: ranks samples in place of human raters).
        prompts: generate_pairs' prompts file (any lightft format).
        samples: generate_pairs: completions sampled per prompt (K).
        temperature: generate_pairs' sampling temperature.
        max_new_tokens: generate_pairs' longest completion.
        limit: generate_pairs: at most N prompts; eval: at most N examples.
        batch_size: generate_pairs: sequences sampled together (on CPU decoding is overhead-bound: larger is faster).
        set: More keys of the training config, dotted (`model.init_args.optimizer.lr: 1e-4`); values may name
            `${stage}` outputs.
    """

    name: str
    kind: str
    config: str | None = None
    model: str | None = None
    gguf_file: str | None = None
    train: str | None = None
    val: str | None = None
    reward_model: str | None = None
    reward: dict[str, Any] | None = None
    prompts: str | None = None
    samples: int = 4
    temperature: float = 1.0
    max_new_tokens: int = 64
    limit: int | None = None
    batch_size: int = 32
    set: dict[str, Any] = field(default_factory=dict)

    @property
    def trained(self) -> bool:
        """Whether this stage is a training run."""
        return self.kind in TRAINED


@dataclass
class EvalSpec:
    """How every trained stage (and each `eval` stage) is assessed when it finishes.

    Args:
        data: Held-out file (any lightft format) with reference answers.
        reward: A rule reward `{class_path, init_args}` scoring each answer (the preference metric).
        reward_model: Score answers with this reward model too (`${rm}`).
        reference: The stage whose model the KL is measured to (usually the SFT stage).
        limit: At most N held-out examples.
        max_new_tokens: Longest answer.
        batch_size: Prompts generated together.
        samples: Also assess the sampled policy: this many samples per prompt at `temperature` (0: greedy only).
            Its figures are the table's `sampled/*` columns; the KL there is the sequence KL's estimate on the
            policy's own samples.
        temperature: Sampling temperature of those samples.
        seed: Random seed of those samples (the same for every stage).
    """

    data: str
    reward: dict[str, Any] | None = None
    reward_model: str | None = None
    reference: str | None = None
    limit: int | None = None
    max_new_tokens: int = 64
    batch_size: int = 32
    samples: int = 0
    temperature: float = 1.0
    seed: int = 0


@dataclass
class PipelineConfig:
    """The whole pipeline: where it writes, how stages are assessed, and the stages in order."""

    root: Path
    stages: list[Stage]
    eval: EvalSpec | None
    source: Path

    def stage(self, name: str) -> Stage:
        """The stage called `name`."""
        return next(s for s in self.stages if s.name == name)

    def directory(self, stage: Stage | str) -> Path:
        """Where a stage writes."""
        return self.root / (stage if isinstance(stage, str) else stage.name)


def load(path: str | Path, root: str | None = None) -> PipelineConfig:
    """Read and check a pipeline config: every key known, every `${stage}` an earlier stage, files present."""
    path = Path(path)
    if not path.is_file():
        raise LightFTError(f"--config: pipeline config '{path}' not found.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise LightFTError(f"{path}:{line} is not valid YAML ({getattr(err, 'problem', err)}); inside {{...}} write "
                           '"${stage}" in quotes.') from None  # fmt: skip
    if not isinstance(raw, dict) or not isinstance(raw.get("stages"), list) or not raw["stages"]:
        raise LightFTError(f"{path}: needs a `stages:` list (name, kind, ...); see configs/pipeline/rlhf_smollm2.yaml.")
    _known(raw, {"root", "stages", "eval"}, f"{path}")
    stages = [_stage(item, i, path) for i, item in enumerate(raw["stages"])]
    evaluation = None
    if raw.get("eval") is not None:
        _known(raw["eval"], {f.name for f in fields(EvalSpec)}, f"{path}: eval")
        if "data" not in raw["eval"]:
            raise LightFTError(f"{path}: eval.data: missing; name the held-out file every stage is assessed on.")
        if not isinstance(raw["eval"].get("samples", 0), int) or raw["eval"].get("samples", 0) < 0:
            raise LightFTError(f"{path}: eval.samples: {raw['eval']['samples']!r}; give a count >= 0 (0: greedy only).")
        evaluation = EvalSpec(**raw["eval"])
    config = PipelineConfig(Path(root or raw.get("root") or f"runs/{path.stem}"), stages, evaluation, path)
    _check(config)
    return config


def _known(raw: Any, allowed: set[str], where: str) -> None:
    if not isinstance(raw, dict):
        raise LightFTError(f"{where}: expected a mapping of keys, got {type(raw).__name__}.")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise LightFTError(f"{where}: unknown key '{unknown[0]}'; known keys: {', '.join(sorted(allowed))}.")


def _stage(item: Any, index: int, path: Path) -> Stage:
    where = f"{path}: stages[{index}]"
    _known(item, {f.name for f in fields(Stage)}, where)
    for key in ("name", "kind"):
        if not item.get(key):
            raise LightFTError(f"{where}.{key}: missing; every stage needs a name and a kind ({', '.join(KINDS)}).")
    if item["kind"] not in KINDS:
        raise LightFTError(f"{where} ({item['name']}).kind: '{item['kind']}' is not one of {', '.join(KINDS)}.")
    return Stage(**item)


def references(value: Any) -> list[str]:
    """The stage names `${...}` in a value (strings, lists and mappings searched)."""
    if isinstance(value, str):
        return REFERENCE.findall(value)
    if isinstance(value, dict):
        return [name for v in value.values() for name in references(v)]
    if isinstance(value, list):
        return [name for v in value for name in references(v)]
    return []


def resolve(value: Any, outputs: dict[str, str]) -> Any:
    """`value` with each `${stage}` replaced by that stage's output path."""
    if isinstance(value, str):
        return REFERENCE.sub(lambda m: outputs[m.group(1)], value)
    if isinstance(value, dict):
        return {k: resolve(v, outputs) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, outputs) for v in value]
    return value


def _check(config: PipelineConfig) -> None:
    seen: list[str] = []
    for stage in config.stages:
        where = f"{config.source}: stage '{stage.name}'"
        if stage.name in seen:
            raise LightFTError(f"{where}: the name is used twice; give each stage its own name.")
        for key in ("model", "train", "val", "reward_model", "prompts", "set", "reward"):
            for name in references(getattr(stage, key)):
                if name not in seen:
                    earlier = ", ".join(seen) or "none"
                    raise LightFTError(f"{where}.{key}: '${{{name}}}' names no earlier stage (earlier: {earlier}); "
                                       "name a stage above this one.")  # fmt: skip
        _check_stage(stage, where)
        seen.append(stage.name)
    if config.eval is not None:
        for name in references(config.eval.reward_model) + ([config.eval.reference] if config.eval.reference else []):
            if name not in seen:
                raise LightFTError(f"{config.source}: eval: '{name}' is not a stage; name one of {', '.join(seen)}.")
        _exists(config.eval.data, f"{config.source}: eval.data")


def _check_stage(stage: Stage, where: str) -> None:
    if stage.trained:
        if not stage.config:
            raise LightFTError(f"{where}.config: missing; a {stage.kind} stage trains from a lightft fit config.")
        _exists(stage.config, f"{where}.config")
        _check_class(stage, where)
    elif stage.kind == "generate_pairs":
        if not stage.model or not stage.prompts:
            raise LightFTError(f"{where}: generate_pairs needs `model` (the policy) and `prompts` (a prompts file).")
        if (stage.reward is None) == (stage.reward_model is None):
            raise LightFTError(f"{where}: generate_pairs ranks with exactly one of `reward` (a rule reward) or "
                               "`reward_model` (a reward model directory).")  # fmt: skip
        if stage.samples < 2:
            raise LightFTError(f"{where}.samples: {stage.samples}; a pair needs at least 2 samples per prompt.")
    elif not stage.model:
        raise LightFTError(f"{where}.model: missing; an eval stage assesses a model (a path or ${{stage}}).")
    for key in ("train", "val", "prompts"):
        value = getattr(stage, key)
        if value and not references(value):
            _exists(value, f"{where}.{key}")


def _exists(value: str, where: str) -> None:
    if not Path(value).exists():
        raise LightFTError(f"{where}: '{value}' not found.")


def _check_class(stage: Stage, where: str) -> None:
    """A training stage's config trains the module its kind says (orpo: the ORPO loss)."""
    raw = yaml.safe_load(Path(stage.config).read_text()) or {}  # type: ignore[arg-type]
    model = raw.get("model") or {}
    class_path = str(model.get("class_path", ""))
    if not class_path.endswith(TRAINED[stage.kind]):
        want = f"lightft.{TRAINED[stage.kind]}"
        raise LightFTError(f"{where}.config: '{stage.config}' trains {class_path or 'no model'}, not a {stage.kind} "
                           f"stage's {want}; fix the kind or the config.")  # fmt: skip
    loss = stage.set.get("model.init_args.loss") or (model.get("init_args") or {}).get("loss") or {}
    loss = str(loss.get("class_path", "") if isinstance(loss, dict) else loss)
    if (stage.kind == "orpo") != loss.endswith("ORPOLoss"):
        want = "an ORPOLoss" if stage.kind == "orpo" else "a DPO-family loss other than ORPOLoss (kind: orpo)"
        raise LightFTError(f"{where}.config: a {stage.kind} stage needs {want} (model.init_args.loss).")
