"""`lightft bench`: a 2-cell matrix end to end (CSV, markdown, PNG), a failed cell recorded, not fatal; its own
options parsed by jsonargparse, the rest passed to every cell's `lightft fit` as given; no chart is no crash."""

import csv
import sys

import pytest

from lightft.cli import main
from lightft.commands import bench
from tests.conftest import ROOT

TINY = "configs/debug/tiny.yaml"


@pytest.mark.slow
def test_two_cell_matrix_writes_all_outputs_and_records_the_failed_cell(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "bench"
    main(["bench", "--config", TINY, "--strategies", "ddp,fsdp", "--steps", "2",
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
        main(["bench", "--config", TINY, "--strategies", "nope", "--out", str(tmp_path / "b")])
    assert exit_info.value.code == 2
    assert "no trainer overlay 'configs/trainer/nope.yaml'" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def _fake_cells(monkeypatch) -> list:
    """Replace each cell's `lightft fit` process by a row; returns the (fit arguments, cell) of each call."""
    calls = []

    def run_cell(base, cell, options, out):
        calls.append((base, cell, options))
        label = ", ".join(f"{bench.AXES[option][0]}={value}" for option, value in cell.items())
        return {"cell": label, "status": "ok", "estimate_gib": 1.0, "peak_gib": 0.9, "error_pct": 11.1,
                "step_seconds": 0.5, "tokens_per_second": 100.0, "reason": ""}  # fmt: skip

    monkeypatch.setattr(bench, "run_cell", run_cell)
    return calls


def test_options_are_parsed_and_fit_arguments_reach_every_cell_as_given(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    calls = _fake_cells(monkeypatch)
    out = tmp_path / "b"
    main(["bench", "--config", TINY, "--batch_sizes", "1, 2", "--data.init_args.max_length=256", "--steps=4",
          "--synthetic", "false", "--trainer.max_time", "00:00:10:00", "--out", str(out),
          "--timeout", "60"])  # fmt: skip
    assert [cell for _, cell, _ in calls] == [{"--batch_sizes": "1"}, {"--batch_sizes": "2"}]
    base, _, options = calls[0]
    assert base == ["--config", TINY, "--data.init_args.max_length=256", "--trainer.max_time", "00:00:10:00"]
    assert options == {"steps": 4, "timeout": 60.0}
    assert "lightft bench --config configs/debug/tiny.yaml --data.init_args.max_length=256" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--steps", "1"], "--steps: needs at least 2"),
        (["--steps", "two"], "steps"),
        (["--timeout", "-5"], "timeout"),
        (["--synthetic", "maybe"], "synthetic"),
        (["--trainer.no_such_key", "1"], "no_such_key"),
    ],
)
def test_bad_options_are_one_line_errors_before_any_cell(tmp_path, capsys, monkeypatch, args, expected):
    monkeypatch.chdir(ROOT)
    calls = _fake_cells(monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--config", TINY, "--out", str(tmp_path / "b"), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("lightft: error:") and expected in err, err
    assert not calls and not (tmp_path / "b").exists()


def test_without_matplotlib_the_tables_are_written_and_the_chart_reported_in_one_line(tmp_path, monkeypatch, capsys):
    """Every cell ran (minutes to hours): a missing plotting library must not lose their results."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    _fake_cells(monkeypatch)
    out = tmp_path / "b"
    main(["bench", "--config", TINY, "--gradient_checkpointing", "false,true", "--out", str(out)])
    with open(out / "bench.csv") as f:
        assert [r["cell"] for r in csv.DictReader(f)] == ["checkpointing=false", "checkpointing=true"]
    assert "| checkpointing=true | ok | 1.000 | 0.900 |" in (out / "bench.md").read_text()
    assert not (out / "bench.png").exists()
    captured = capsys.readouterr()
    [line] = [line for line in captured.err.splitlines() if "bench.png" in line]
    assert "not drawn" in line and "matplotlib" in line and "Traceback" not in captured.err
    wrote = captured.out.strip().splitlines()[-1]
    assert wrote.startswith("wrote") and "bench.csv" in wrote and "bench.png" not in wrote


def test_write_outputs_survives_a_failing_chart(tmp_path, monkeypatch, capsys):
    def broken(rows, path, title):
        raise RuntimeError("no display\nmore detail")

    monkeypatch.setattr(bench, "_chart", broken)
    rows = [{"cell": "as configured", "status": "oom", "reason": "CUDA out of memory"}]
    assert bench.write_outputs(rows, tmp_path, "t") == [tmp_path / "bench.csv", tmp_path / "bench.md"]
    assert "| as configured | oom: CUDA out of memory |" in (tmp_path / "bench.md").read_text()
    assert capsys.readouterr().err.strip().endswith("not drawn: RuntimeError: no display")


def test_matplotlib_is_a_runtime_dependency():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(dep.startswith("matplotlib") for dep in project["dependencies"])
