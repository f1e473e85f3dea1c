"""One markdown table of benchmarks/gpu/run.sh's rows: measured beside `lightft estimate`, goal and pass/fail per row.

    python benchmarks/gpu/table.py RESULTS [--out FILE]

RESULTS (run.sh's GPU_RESULTS, default runs/gpu-proof) holds one folder per row: `bench.csv` (`lightft bench`'s, one
cell), `note` (the row's setup), `rc` and `seconds` (the bench process), `limit` (its time limit) or `skipped` (why
it did not run); `tests/` holds `pytest.log`. Beside them: `versions.txt`, `budget`, `elapsed`, `smoke`. A row that
failed, timed out or was skipped is reported with its reason; the table is never refused.
"""

from __future__ import annotations

import csv
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GIB = 2**30
TIMEOUT_CODES = (124, 137)  # timeout(1): TERM, KILL


@dataclass(frozen=True)
class Goal:
    """`metric` compared with `limit`: at most (`at_least` False) or at least; shown in `unit`."""

    metric: str  # peak_bytes | mfu | step_ratio | tests
    limit: float
    text: str
    at_least: bool = False
    unit: str = ""

    def show(self, value: float) -> str:
        """The measured value in the goal's unit."""
        if self.unit == "GB":
            return f"{value / 1e9:.2f} GB"
        if self.unit == "GiB":
            return f"{value / GIB:.2f} GiB"
        if self.unit == "%":
            return f"{100 * value:.1f}%"
        return f"{value:.2f}{self.unit}"

    def met(self, value: float) -> bool:
        """Whether `value` reaches the goal."""
        return value >= self.limit if self.at_least else value <= self.limit


@dataclass(frozen=True)
class Row:
    """One row of the table: run.sh's folder `name`, what it measures, its goal (None: measured only)."""

    name: str
    title: str
    goal: Goal | None = None
    baseline: str | None = None  # step_ratio: the row whose step time is the denominator


ROWS = (
    Row("smollm2", "SmolLM2-135M, LoRA SFT, bf16 (tokens/s, peak)"),
    Row("full1b", "Llama-3.2-1B shape, full fine-tune, bf16", Goal("mfu", 0.45, "MFU ≥ 45%", at_least=True, unit="%")),
    Row("qlora8b", "Llama-3-8B shape, QLoRA, seq 2048", Goal("peak_bytes", 6.5e9, "peak ≤ 6.5 GB", unit="GB")),
    Row("qlora8b_nooffload", "Llama-3-8B shape, QLoRA, seq 2048, offloading off"),
    Row("lora8b", "Llama-3-8B shape, LoRA, bf16, seq 2048", Goal("peak_bytes", 16 * GIB, "peak ≤ 16 GiB", unit="GiB")),
    Row("dpo", "DPO step, precomputed reference", Goal("step_ratio", 1.1, "step ≤ 1.1× SFT step", unit="×"), "sft"),
    Row("sft", "SFT step, the chosen side (DPO's baseline)"),
    Row("tests", "GPU-marked tests (`pytest -m gpu`)", Goal("tests", 0, "all pass")),
)
COLUMNS = ["row", "setup", "estimate GiB", "peak GiB (reserved)", "estimate error", "step s", "tokens/s", "MFU",
           "wall s", "goal", "result"]  # fmt: skip
HEADER = "| " + " | ".join(COLUMNS) + " |"


def _read(path: Path) -> str:
    return path.read_text().strip() if path.is_file() else ""


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def last_line(log: Path) -> str:
    """The most telling line of a log: the last one naming an error, else the last one."""
    lines = [line.strip() for line in _read(log).splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"error|exception|killed|out of memory", line, re.IGNORECASE)]
    return (errors or lines or ["(empty log)"])[-1][:240]


def read_cell(folder: Path) -> dict[str, Any]:
    """A bench row's state (`ok`, `failed`, `oom`, `refused`, `timeout`, `skipped`, `running`, `not run`) and
    numbers.
    """  # noqa: D205
    cell: dict[str, Any] = {"state": "not run", "reason": "", "note": _read(folder / "note"),
                            "seconds": _float(_read(folder / "seconds"))}  # fmt: skip
    if not folder.is_dir():
        return cell
    if (folder / "skipped").is_file():
        return {**cell, "state": "skipped", "reason": _read(folder / "skipped")}
    if (folder / "bench.csv").is_file():
        with open(folder / "bench.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            return {**cell, "state": "failed", "reason": "bench.csv holds no cell"}
        found = rows[0]
        numbers = {key: _float(found.get(key)) for key in ("estimate_gib", "peak_gib", "reserved_gib", "error_pct",
                                                             "step_seconds", "tokens_per_second", "mfu")}  # fmt: skip
        return {**cell, **numbers, "state": found["status"], "reason": found.get("reason", ""),
                "device": found.get("device", "")}  # fmt: skip
    rc = _read(folder / "rc")
    if not rc:
        return {**cell, "state": "running"}
    if int(rc) in TIMEOUT_CODES:
        return {**cell, "state": "timeout", "reason": f"killed at its {_read(folder / 'limit') or '?'} s limit"}
    return {**cell, "state": "failed", "reason": f"exit {rc}: {last_line(folder / 'bench.log')}"}


def read_tests(folder: Path) -> dict[str, Any]:
    """The pytest row: counts from pytest's summary line, exit status, first failures."""
    cell: dict[str, Any] = {"state": "not run", "reason": "", "note": _read(folder / "note"),
                            "seconds": _float(_read(folder / "seconds")), "counts": {}}  # fmt: skip
    if (folder / "skipped").is_file():
        return {**cell, "state": "skipped", "reason": _read(folder / "skipped")}
    rc = _read(folder / "rc")
    if not rc:
        return {**cell, "state": "running" if (folder / "limit").is_file() else "not run"}
    log = _read(folder / "pytest.log")
    counts: dict[str, int] = {}
    for line in reversed(log.splitlines()):
        found = re.findall(r"(\d+) (passed|failed|errors?|skipped|deselected|xfailed|xpassed)", line)
        if found and re.search(r" in [\d.]+s", line):
            counts = {("error" if kind.startswith("error") else kind): int(n) for n, kind in found}
            break
    failures = [line.split(" - ")[0] for line in log.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    cell.update(counts=counts, rc=int(rc), failures=failures)
    if int(rc) in TIMEOUT_CODES:  # no summary: count the tests that had finished (pytest -v prints each one)
        done = re.findall(r"\b(PASSED|FAILED|ERROR|SKIPPED)\b", "\n".join(x for x in log.splitlines() if "::" in x))
        so_far = ", ".join(f"{done.count(k)} {k.lower()}" for k in dict.fromkeys(done))
        return {**cell, "state": "timeout", "reason": f"killed at its {_read(folder / 'limit') or '?'} s limit"
                + (f" ({so_far} by then)" if so_far else "")}  # fmt: skip
    return {**cell, "state": "ok" if counts else "failed", "reason": "" if counts else last_line(folder / "pytest.log")}


def judge(row: Row, cell: dict[str, Any], cells: dict[str, dict[str, Any]]) -> str:
    """The result column: PASS/FAIL with the measured value, `measured` (no goal), or why there is no result."""
    if cell["state"] != "ok":
        return cell["state"] + (f": {cell['reason']}" if cell["reason"] else "")
    goal = row.goal
    if goal is None:
        return "measured"
    if goal.metric == "tests":
        return _judge_tests(cell)
    if goal.metric == "step_ratio":
        base = cells.get(row.baseline or "", {})
        if base.get("state") != "ok" or not base.get("step_seconds") or cell.get("step_seconds") is None:
            return f"n/a: no {row.baseline} step time to compare with"
        value = cell["step_seconds"] / base["step_seconds"]
    elif goal.metric == "peak_bytes":
        value = cell["peak_gib"] * GIB if cell.get("peak_gib") is not None else None
    else:
        value = cell.get(goal.metric)
    if value is None:
        return f"n/a: no {goal.metric} on {cell.get('device') or 'this device'}"
    return f"{'PASS' if goal.met(value) else 'FAIL'}: {goal.show(value)}"


def _judge_tests(cell: dict[str, Any]) -> str:
    counts = cell["counts"]
    summary = ", ".join(f"{n} {kind}" for kind, n in counts.items())
    bad = counts.get("failed", 0) + counts.get("error", 0)
    if bad or cell["rc"] not in (0, 5):
        first = "; ".join(cell["failures"][:3])
        return f"FAIL: {summary}" + (f" ({first})" if first else "")
    if counts.get("passed", 0):
        return f"PASS: {summary}"
    return f"n/a: {summary or 'no test ran'} (no CUDA here)"


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "" if value is None else f"{value:{spec}}{suffix}"


def render(results: Path) -> str:
    """The whole markdown: header (device, versions, mode, time), the table, the definitions."""
    cells = {row.name: (read_tests if row.name == "tests" else read_cell)(results / row.name) for row in ROWS}
    smoke = _read(results / "smoke") == "1"
    devices = [c.get("device") for c in cells.values() if c.get("device")]
    device = devices[0] if devices else "device unknown"
    lines = [f"## lightft GPU proof: {device}" + (" (SMOKE: CPU, tiny shapes; goals shown, not meaningful)" if smoke
                                                   else ""), ""]  # fmt: skip
    versions = [line for line in _read(results / "versions.txt").splitlines() if line.strip()]
    lines += [f"    {line}" for line in versions] + [""] if versions else []
    elapsed, budget = _read(results / "elapsed"), _read(results / "budget")
    if elapsed:
        lines += [f"Wall time {elapsed} s of a {budget or '?'} s budget, installs included.", ""]
    lines += [HEADER, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    verdicts = []
    for row in ROWS:
        cell = cells[row.name]
        result = judge(row, cell, cells)
        if row.goal is not None:
            verdicts.append(result.split(":")[0])
        peak = _fmt(cell.get("peak_gib"), ".2f")
        if peak and cell.get("reserved_gib"):
            peak += f" ({cell['reserved_gib']:.2f})"
        values = [row.title, cell["note"].replace("|", "/"), _fmt(cell.get("estimate_gib"), ".2f"), peak,
                  _fmt(cell.get("error_pct"), "+.1f", "%"), _fmt(cell.get("step_seconds"), ".3f"),
                  _fmt(cell.get("tokens_per_second"), ",.0f"), _fmt(cell.get("mfu"), ".1%"),
                  _fmt(cell.get("seconds"), ".0f"), row.goal.text if row.goal else "",
                  result.replace("|", "/")]  # fmt: skip
        lines.append("| " + " | ".join(values) + " |")
    tally = {v: verdicts.count(v) for v in dict.fromkeys(verdicts)}
    lines += ["", "Goals: " + ", ".join(f"{n} {v}" for v, n in tally.items()), "", *NOTES]
    return "\n".join(lines) + "\n"


NOTES = [
    "- Each row is one `lightft bench` process (its own `lightft fit`), random weights, synthetic text packed into "
    "full rows (every token trained), except DPO/SFT (the preference pairs of `data/preference/train.jsonl`).",
    "- estimate: `lightft estimate` for the same config, CUDA context (0.5 GiB) included; estimate error compares it "
    "without the context to the measured peak.",
    "- peak: `torch.cuda.max_memory_allocated` from the first batch after the warm-up on (reserved in brackets); on "
    "CPU the resident-memory rise. Memory goals are judged on the allocated peak.",
    "- step s: mean time per training batch after the first (warm-up); tokens/s: non-pad tokens; MFU: 6N (full "
    "fine-tuning) or 4N (frozen base) FLOPs per token over the GPU's dense bf16 peak (989 TFLOP/s for H100/H200), "
    "attention's own FLOPs not counted.",
    "- wall s: the whole row (start-up, model build, quantization, steps). The memory rows run beside the GPU-marked "
    "tests; the timed rows run alone.",
]


def main(argv: list[str]) -> None:
    """`table.py RESULTS [--out FILE]`: print the table; also write it to FILE."""
    if not argv or argv[0].startswith("-"):
        raise SystemExit(__doc__)
    text = render(Path(argv[0]))
    if "--out" in argv:
        Path(argv[argv.index("--out") + 1]).write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main(sys.argv[1:])
