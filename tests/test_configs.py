"""Every shipped YAML parses against the CLI and instantiates its model, data and trainer; its local files exist."""

from pathlib import Path

import pytest
import yaml

from lightft.cli import LightFTCLI
from tests.conftest import ROOT

OVERLAYS = ("trainer", "loggers")  # stacked on a recipe: tests/strategies/test_overlays.py, tests/test_loggers.py
YAMLS = sorted(p.relative_to(ROOT) for p in (ROOT / "configs").rglob("*.yaml") if p.parent.name not in OVERLAYS)
PIPELINES = [p for p in YAMLS if "stages" in (yaml.safe_load((ROOT / p).read_text()) or {})]
CONFIGS = [p for p in YAMLS if p not in PIPELINES]  # `lightft fit` configs


def test_there_are_recipes():
    names = {p.name for p in CONFIGS}
    assert {"quickstart.yaml", "tiny.yaml", "smollm2_lora.yaml", "smollm2_qlora.yaml", "smollm2_full.yaml"} <= names


def test_every_peft_strategy_has_a_recipe():
    import lightft.peft

    texts = [(ROOT / p).read_text() for p in CONFIGS if p.parts[1] == "sft"]
    strategies = [n for n in lightft.peft.__all__ if n[0].isupper() and n != "PEFTStrategy"]
    for name in strategies:
        assert any(f"class_path: lightft.peft.{name}\n" in t for t in texts), f"no configs/sft recipe uses {name}"
    assert any("dora: true" in t for t in texts)


@pytest.mark.parametrize("path", PIPELINES, ids=str)
def test_pipeline_config_loads(path, monkeypatch):
    """Every stage known, every `${stage}` an earlier stage, every stage config the right module, files present."""
    from lightft.pipeline import load

    monkeypatch.chdir(ROOT)
    assert load(path).stages


@pytest.mark.parametrize("path", CONFIGS, ids=str)
def test_config_parses_and_instantiates(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    model_path = yaml.safe_load((ROOT / path).read_text())["model"]["init_args"]["model"]["path"]
    if not model_path.startswith(("package://", "tests/")):  # a Hub id: its config cannot be fetched offline
        monkeypatch.setattr("lightft.commands.fit.check_compatibility", lambda module, data, trainer: None)
    cli = LightFTCLI(args=["--config", str(path), "--trainer.accelerator", "cpu", "--trainer.devices", "1"], run=False)
    assert cli.model.model_spec.path and cli.datamodule.tokenizer_spec == cli.model.model_spec
    for spec in cli.datamodule.specs.values():
        if spec is not None and spec.path.endswith((".jsonl", ".json", ".parquet", ".csv")):
            assert Path(spec.path).is_file(), f"{path} names missing data {spec.path}"
