"""benchmarks/gpu: the table builder on canned row folders (goals, pass/fail, failed/timed-out/skipped rows, the
pytest summary), the wheel slimmer and the chosen-side writer; slow: run.sh's CPU smoke mode on a few rows."""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

GPU = ROOT / "benchmarks" / "gpu"
BENCH_COLUMNS = ["cell", "status", "estimate_gib", "peak_gib", "reserved_gib", "error_pct", "step_seconds",
                 "tokens_per_second", "mfu", "world_size", "device", "reason"]  # fmt: skip


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"gpu_{name}", GPU / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


table = load("table")
prep = load("prep")


def bench_row(results: Path, name: str, note: str = "setup", rc: int = 0, seconds: int = 42, **cell) -> Path:
    """A row folder as run.sh leaves it after `lightft bench` wrote its one-cell bench.csv."""
    folder = results / name
    folder.mkdir(parents=True)
    (folder / "note").write_text(note + "\n")
    (folder / "rc").write_text(f"{rc}\n")
    (folder / "seconds").write_text(f"{seconds}\n")
    (folder / "limit").write_text("150\n")
    if cell:
        row = {"cell": "as configured", "status": "ok", "world_size": 1, "device": "NVIDIA H200", "reason": "", **cell}
        with open(folder / "bench.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=BENCH_COLUMNS)
            writer.writeheader()
            writer.writerow({k: row.get(k, "") for k in BENCH_COLUMNS})
    return folder


def write_tests_row(results: Path, rc: int, log: str, seconds: int = 95) -> None:
    folder = results / "tests"
    folder.mkdir(parents=True)
    (folder / "note").write_text("pytest -m gpu -n 4 tests/test_gpu_strategies.py\n")
    (folder / "limit").write_text("300\n")
    (folder / "rc").write_text(f"{rc}\n")
    (folder / "seconds").write_text(f"{seconds}\n")
    (folder / "pytest.log").write_text(log)


def rows_of(text: str) -> dict[str, list[str]]:
    """{row title: its cells} from the markdown table."""
    out = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| row |"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            out[cells[0]] = cells
    return out


def result(rows: dict[str, list[str]], name: str) -> str:
    title = next(row.title for row in table.ROWS if row.name == name)
    return rows[title][table.COLUMNS.index("result")]


def test_every_goal_judged_from_canned_cells(tmp_path):
    res = tmp_path / "res"
    bench_row(res, "smollm2", estimate_gib=2.1, peak_gib=1.9, reserved_gib=2.3, error_pct=-15.8, step_seconds=0.2,
              tokens_per_second=81920, mfu=0.12)  # fmt: skip
    bench_row(res, "full1b", estimate_gib=70.0, peak_gib=66.0, step_seconds=0.61, tokens_per_second=53000, mfu=0.47)
    bench_row(res, "qlora8b", estimate_gib=7.5, peak_gib=6.2, step_seconds=1.5, tokens_per_second=1365)  # 6.66 GB
    (res / "qlora8b_nooffload").mkdir()
    (res / "qlora8b_nooffload" / "skipped").write_text("budget (optional row)\n")
    bench_row(res, "lora8b", estimate_gib=17.0, peak_gib=15.5, step_seconds=1.1, tokens_per_second=1860)
    bench_row(res, "dpo", estimate_gib=1.9, peak_gib=1.2, step_seconds=0.105, tokens_per_second=9000)
    bench_row(res, "sft", estimate_gib=1.4, peak_gib=0.9, step_seconds=0.100, tokens_per_second=5000)
    write_tests_row(res, 0, "....\n17 passed in 95.31s (0:01:35)\n")
    (res / "versions.txt").write_text("torch 2.11.0+cu130, CUDA 13.0, device: NVIDIA H200, 140 GiB\n")
    (res / "budget").write_text("480\n")
    (res / "elapsed").write_text("431\n")
    text = table.render(res)
    rows = rows_of(text)
    assert [r[0] for r in rows.values()] == [row.title for row in table.ROWS]  # every row, in order, once
    assert text.startswith("## lightft GPU proof: NVIDIA H200\n") and "SMOKE" not in text
    assert "Wall time 431 s of a 480 s budget" in text and "torch 2.11.0+cu130" in text
    assert result(rows, "smollm2") == "measured"
    assert result(rows, "full1b") == "PASS: 47.0%"
    assert result(rows, "qlora8b") == "FAIL: 6.66 GB"  # 6.2 GiB is over 6.5 GB
    assert result(rows, "qlora8b_nooffload") == "skipped: budget (optional row)"
    assert result(rows, "lora8b") == "PASS: 15.50 GiB"
    assert result(rows, "dpo") == "PASS: 1.05×"
    assert result(rows, "sft") == "measured"
    assert result(rows, "tests") == "PASS: 17 passed"
    assert "Goals: 4 PASS, 1 FAIL" in text
    smol = rows[table.ROWS[0].title]
    assert smol[table.COLUMNS.index("peak GiB (reserved)")] == "1.90 (2.30)"
    assert smol[table.COLUMNS.index("tokens/s")] == "81,920" and smol[table.COLUMNS.index("MFU")] == "12.0%"
    assert smol[table.COLUMNS.index("estimate error")] == "-15.8%" and smol[table.COLUMNS.index("wall s")] == "42"


def test_failed_timed_out_running_and_missing_rows_are_reported_not_fatal(tmp_path):
    res = tmp_path / "res"
    (res / "smollm2").mkdir(parents=True)  # started, no exit status yet: the table written between rows
    (res / "smollm2" / "note").write_text("batch 8 x 2048\n")
    bench_row(res, "full1b", rc=137)  # killed at its limit: no bench.csv
    bench_row(res, "qlora8b", status="oom", reason="torch.OutOfMemoryError: CUDA out of memory. Tried 2.00 GiB")
    lora = bench_row(res, "lora8b", rc=1)
    (lora / "bench.log").write_text("Traceback (most recent call last):\n  File x\nValueError: boom | bad\n\n")
    bench_row(res, "dpo", step_seconds=0.2, peak_gib=1.0)
    bench_row(res, "sft", status="failed", reason="exit 1")
    summary = "FAILED tests/test_gpu_strategies.py::test_lora_on_one_gpu[tiny-fsdp] - AssertionError"
    write_tests_row(res, 1, f"F.\n{summary}\n1 failed, 16 passed in 80.02s\n")
    rows = rows_of(table.render(res))
    assert result(rows, "smollm2") == "running"
    assert result(rows, "full1b") == "timeout: killed at its 150 s limit"
    assert result(rows, "qlora8b").startswith("oom: torch.OutOfMemoryError: CUDA out of memory")
    assert result(rows, "qlora8b_nooffload") == "not run"
    assert result(rows, "lora8b") == "failed: exit 1: ValueError: boom / bad"  # pipes never break the table
    assert result(rows, "dpo") == "n/a: no sft step time to compare with"
    assert result(rows, "sft") == "failed: exit 1"
    failed = "FAILED tests/test_gpu_strategies.py::test_lora_on_one_gpu[tiny-fsdp]"
    assert result(rows, "tests") == f"FAIL: 1 failed, 16 passed ({failed})"
    assert all(len(cells) == len(table.COLUMNS) for cells in rows.values())


def test_tests_killed_at_their_limit_count_what_had_finished(tmp_path):
    res = tmp_path / "res"
    progress = ["[gw0] [  5%] PASSED tests/test_gpu_strategies.py::test_lora_on_one_gpu[tiny-ddp]",
                "[gw1] [ 11%] PASSED tests/test_gpu_strategies.py::test_lora_on_one_gpu[tiny-fsdp]",
                "[gw2] [ 17%] FAILED tests/test_gpu_strategies.py::test_qlora_on_one_gpu[ddp]"]  # fmt: skip
    write_tests_row(res, 137, "\n".join(progress) + "\n")
    rows = rows_of(table.render(res))
    assert result(rows, "tests") == "timeout: killed at its 300 s limit (2 passed, 1 failed by then)"


def test_cpu_smoke_results_have_no_mfu_and_skipped_tests(tmp_path, capsys):
    res = tmp_path / "res"
    bench_row(res, "full1b", peak_gib=0.02, step_seconds=0.5, tokens_per_second=500, device="cpu")
    write_tests_row(res, 0, "sss\n17 skipped in 1.20s\n")
    (res / "smoke").write_text("1\n")
    table.main([str(res), "--out", str(tmp_path / "t.md")])
    text = (tmp_path / "t.md").read_text()
    assert capsys.readouterr().out == text
    assert "(SMOKE: CPU, tiny shapes; goals shown, not meaningful)" in text.splitlines()[0]
    rows = rows_of(text)
    assert result(rows, "full1b") == "n/a: no mfu on cpu"
    assert result(rows, "tests") == "n/a: 17 skipped (no CUDA here)"
    assert table.Goal("peak_bytes", 6.5e9, "").met(6.5e9) and not table.Goal("mfu", 0.45, "", at_least=True).met(0.4)


def test_slim_wheel_drops_members_and_rewrites_record(tmp_path):
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pkg/__init__.py", "x = 1\n")
        z.writestr("pkg/lib_cuda118.so", b"\0" * 1000)
        z.writestr("pkg/lib_cuda130.so", b"\1" * 10)
        z.writestr("pkg-1.0.dist-info/METADATA", "Name: pkg\n")
        z.writestr("pkg-1.0.dist-info/RECORD", "stale\n")
    prep.slim_wheel(str(wheel), ["pkg/lib_cuda1[0-2]*"])
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        record = list(csv.reader(z.read("pkg-1.0.dist-info/RECORD").decode().splitlines()))
        data = z.read("pkg/lib_cuda130.so")
    assert names == {"pkg/__init__.py", "pkg/lib_cuda130.so", "pkg-1.0.dist-info/METADATA", "pkg-1.0.dist-info/RECORD"}
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    assert ["pkg/lib_cuda130.so", f"sha256={digest}", "10"] in record
    assert ["pkg-1.0.dist-info/RECORD", "", ""] in record and len(record) == 4


def test_chosen_side_rows_are_prompt_completion(tmp_path):
    out = tmp_path / "chosen.jsonl"
    prep.chosen(str(ROOT / "data/preference/train.jsonl"), str(out), 3)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    first = json.loads((ROOT / "data/preference/train.jsonl").read_text().splitlines()[0])
    assert len(rows) == 3 and rows[0] == {"prompt": first["prompt"], "completion": first["chosen"]}


@pytest.mark.slow
def test_smoke_mode_runs_the_pipeline_on_cpu(tmp_path):
    """run.sh end to end on CPU (tiny shapes), three rows: QLoRA through the 8B recipe, DPO vs SFT (the whole smoke
    mode, every row, takes 2 minutes on 2 idle cores, 4 to 6 on busy ones: `LIGHTFT_GPU_SMOKE=1 bash run.sh`)."""
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env.update(LIGHTFT_GPU_SMOKE="1", GPU_ROWS="qlora8b,dpo,sft", GPU_RESULTS=str(tmp_path / "res"),
               PYTHON=sys.executable)  # fmt: skip
    run = subprocess.run(["bash", str(GPU / "run.sh")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = rows_of(run.stdout)
    assert result(rows, "qlora8b").startswith("PASS: "), result(rows, "qlora8b")
    assert result(rows, "dpo").startswith(("PASS: ", "FAIL: ")), result(rows, "dpo")  # a ratio was computed
    assert result(rows, "sft") == "measured"
    for name in ("smollm2", "full1b", "lora8b", "qlora8b_nooffload", "tests"):
        assert result(rows, name).startswith("skipped: not selected"), result(rows, name)
    assert (tmp_path / "res" / "table.md").read_text() in run.stdout
