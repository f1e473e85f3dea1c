"""Every trainer overlay in configs/trainer/ composes with a recipe into the preset it names; FSDP (v1) on CPU is
refused before anything loads."""

import pytest
import yaml

from lightft.cli import LightFTCLI
from lightft.errors import LightFTError
from tests.conftest import ROOT
from tests.test_cli import fit_fails

OVERLAYS = sorted((ROOT / "configs" / "trainer").glob("*.yaml"))


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_overlay_composes_with_a_recipe(overlay, monkeypatch):
    """Strategy overlays instantiate on 2 CPU processes (FSDP v1: refused there by the check, as it must be);
    hardware overlays parse (GPU ones with the accelerator overridden, no GPU here)."""
    monkeypatch.chdir(ROOT)
    trainer = yaml.safe_load(overlay.read_text())["trainer"]
    args = ["--config", "configs/debug/tiny.yaml", "--config", "configs/trainer/cpu2.yaml", "--config", str(overlay)]
    if "strategy" not in trainer:
        args += ["--trainer.accelerator", "cpu", "--trainer.precision", "32-true"]
        cli = LightFTCLI(args=args, run=False)
        assert cli.trainer.num_devices == trainer["devices"] and cli.trainer.num_nodes == trainer.get("num_nodes", 1)
        return
    if trainer["strategy"]["class_path"] == "lightft.strategies.FSDP":
        with pytest.raises(LightFTError, match="runs on GPUs only"):
            LightFTCLI(args=args, run=False)
        return
    cli = LightFTCLI(args=args, run=False)
    assert type(cli.trainer.strategy).__name__ == trainer["strategy"]["class_path"].rsplit(".", 1)[-1]


def test_cli_refuses_fsdp_on_cpu_before_loading(tmp_path, capsys):
    line = fit_fails(capsys, tmp_path, "--config", str(ROOT / "configs" / "trainer" / "fsdp.yaml"))
    assert "trainer.strategy: fsdp runs on GPUs only" in line
    assert not (tmp_path / "run" / "checkpoints").exists()
