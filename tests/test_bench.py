"""`lightft bench`: a 2-cell matrix end to end (CSV, markdown, PNG), a failed cell recorded, not fatal."""

import csv

import pytest

from lightft.cli import main
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_two_cell_matrix_writes_all_outputs_and_records_the_failed_cell(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "bench"
    main(["bench", "--config", "configs/debug/tiny.yaml", "--strategies", "ddp,fsdp", "--steps", "2",
          "--data.init_args.max_length", "256", "--out", str(out)])  # fmt: skip
    with open(out / "bench.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["cell"] for r in rows] == ["strategy=ddp", "strategy=fsdp"]
    ok, failed = rows
    assert ok["status"] == "ok" and float(ok["peak_gib"]) > 0 and float(ok["estimate_gib"]) > 0
    assert float(ok["tokens_per_second"]) > 0 and float(ok["step_seconds"]) > 0 and ok["mfu"] == ""  # CPU: no MFU
    assert failed["status"] == "failed" and "fsdp runs on GPUs only" in failed["reason"]  # FSDP v1 refuses CPU
    table = (out / "bench.md").read_text()
    assert "| strategy=ddp | ok |" in table and "| strategy=fsdp | failed: " in table
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out


def test_bad_axis_value_fails_before_any_cell(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--config", "configs/debug/tiny.yaml", "--strategies", "nope", "--out", str(tmp_path / "b")])
    assert exit_info.value.code == 2
    assert "no trainer overlay 'configs/trainer/nope.yaml'" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
