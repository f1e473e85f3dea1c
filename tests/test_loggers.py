"""MLflow and W&B loggers for real: one tiny `lightft fit` per logger (MLflow: its default SQLite store in the working
directory; W&B: offline), then read back what each store holds: every train/ and val/ metric, the hyper-parameters, the
resolved config, the sample tables; the run directory keeps its layout. A missing package is one line with the pip
command. Skipped, with the reason, where `lightft[mlflow]` / `lightft[wandb]` is not installed."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from jsonargparse import Namespace
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger

from lightft.callbacks.samples import FILENAME as SAMPLES_FILE
from lightft.callbacks.samples import markdown_table
from lightft.commands.fit import ParseOnlyCLI
from lightft.errors import LightFTError
from lightft.loggers import MLFLOW_DEFAULT_URI, check_installed, importable
from tests.conftest import QUICKSTART, ROOT

TINY = str(ROOT / "configs" / "debug" / "tiny.yaml")
OVERLAYS = ROOT / "configs" / "loggers"
PROMISED = {"train/loss", "train/grad_norm", "train/tokens_per_sec", "train/peak_memory_gb", "val/loss", "val/ppl"}
STEPS = 4  # tiny.yaml validates (and samples) every 4 steps: one validation, one sample table at step 4
needs_mlflow = pytest.mark.skipif(
    not all(map(importable, ("mlflow", "sqlalchemy", "alembic"))), reason="needs pip install 'lightft[mlflow]'"
)
needs_wandb = pytest.mark.skipif(not importable("wandb"), reason="needs pip install 'lightft[wandb]'")


def lightft(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`lightft fit` on the tiny config in a fresh process (the logger's atexit hooks run), files by absolute path."""
    absolute = ["--model.init_args.model.path", str(ROOT / "tests/assets/tiny-llama"),
                "--data.init_args.train.path", str(QUICKSTART / "train.jsonl"),
                "--data.init_args.val.path", str(QUICKSTART / "val.jsonl")]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    words = [sys.executable, "-m", "lightft.cli", "fit", "--config", TINY, *absolute, *args]
    return subprocess.run(words, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def fit(tmp: Path, overlay: str, env: dict[str, str] | None = None) -> Path:
    run = tmp / "my-run"
    args = ["--config", str(OVERLAYS / overlay), "--trainer.default_root_dir", str(run), "--trainer.max_steps"]
    result = lightft(*args, str(STEPS), "--trainer.enable_progress_bar", "false", cwd=tmp, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def samples_at(run: Path, step: int) -> list[dict]:
    rows = [json.loads(line) for line in (run / SAMPLES_FILE).read_text(encoding="utf-8").splitlines()]
    return [row for row in rows if row["step"] == step]


def assert_run_directory(run: Path) -> None:
    """The run directory is what it is with TensorBoard, less the events file: config, samples, checkpoints."""
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert [row["index"] for row in samples_at(run, STEPS)] == [0, 1]
    assert not list(run.glob("events.out.tfevents.*"))


# ------------------------------------------------------------------------------------------------------------ MLflow


@pytest.fixture(scope="module")
def mlflow_run(tmp_path_factory):
    """A tiny fit with configs/loggers/mlflow.yaml as shipped: MLflow's default store (./mlflow.db, ./mlruns)."""
    tmp = tmp_path_factory.mktemp("mlflow")
    run = fit(tmp, "mlflow.yaml", env={"MLFLOW_TRACKING_URI": ""})
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lightft")
    [found] = client.search_runs([experiment.experiment_id])
    return run, client, found


@needs_mlflow
def test_mlflow_gets_every_metric_at_every_step(mlflow_run):
    run, client, found = mlflow_run
    assert found.info.status == "FINISHED" and found.info.run_name == run.name
    assert set(found.data.metrics) >= PROMISED
    for name in ("train/loss", "train/grad_norm"):
        assert [m.step for m in client.get_metric_history(found.info.run_id, name)] == list(range(STEPS))
    assert [m.step for m in client.get_metric_history(found.info.run_id, "val/loss")] == [STEPS - 1]
    assert_run_directory(run)


@needs_mlflow
def test_mlflow_gets_the_resolved_config_and_the_nested_hyperparameters(mlflow_run, tmp_path):
    run, client, found = mlflow_run
    copy = client.download_artifacts(found.info.run_id, "config.yaml", str(tmp_path))
    assert Path(copy).read_bytes() == (run / "config.yaml").read_bytes()
    params = found.data.params
    assert params["peft/class_path"] == "lightft.peft.LoRA" and params["peft/init_args/r"] == "4"
    assert params["optimizer/lr"] == "0.003"


@needs_mlflow
def test_mlflow_gets_the_samples_as_a_markdown_table(mlflow_run, tmp_path):
    run, client, found = mlflow_run
    assert [a.path for a in client.list_artifacts(found.info.run_id, "samples")] == [f"samples/step_{STEPS}.md"]
    table = client.download_artifacts(found.info.run_id, f"samples/step_{STEPS}.md", str(tmp_path))
    assert Path(table).read_text(encoding="utf-8") == markdown_table(samples_at(run, STEPS))


# ------------------------------------------------------------------------------------------------------------- W&B


def wandb_records(path: Path) -> list:
    """The records of an offline W&B run file (`run-<id>.wandb`): LevelDB's log format, W&B's protobuf records."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", "not a W&B run file"
    records, pos, chunk = [], 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = chunk + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def nested(items) -> dict:
    """History or config items as a dict: a value given in parts (`nested_key`) is nested, as it was logged."""
    out: dict = {}
    for item in items:
        *parents, last = [item.key] if item.key else list(item.nested_key)
        node = out
        for parent in parents:
            node = node.setdefault(parent, {})
        node[last] = json.loads(item.value_json)
    return out


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory):
    """A tiny fit with configs/loggers/wandb.yaml, offline, every W&B directory in the test's tmp directory."""
    tmp = tmp_path_factory.mktemp("wandb")
    dirs = {f"WANDB_{name}_DIR": str(tmp / name.lower()) for name in ("CONFIG", "CACHE", "DATA")}
    run = fit(tmp, "wandb.yaml", env={"WANDB_MODE": "offline", "WANDB_DIR": str(tmp / "elsewhere"), **dirs})
    [files] = list((run / "wandb").glob("offline-run-*"))  # under the run directory, not $WANDB_DIR
    [log] = list(files.glob("run-*.wandb"))
    records = wandb_records(log)
    history = [nested(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    config = nested(item for r in records if r.WhichOneof("record_type") == "config" for item in r.config.update)
    return run, files, history, config


@needs_wandb
def test_wandb_gets_every_metric_at_every_step(wandb_run):
    run, _, history, _ = wandb_run
    logged = {key for row in history for key in row}
    assert logged >= PROMISED
    steps = [row["trainer/global_step"] for row in history if "train/loss" in row]
    assert steps == list(range(STEPS))
    assert [row["trainer/global_step"] for row in history if "val/loss" in row] == [STEPS - 1]
    assert_run_directory(run)


@needs_wandb
def test_wandb_gets_the_resolved_config_and_the_nested_hyperparameters(wandb_run):
    run, _, _, config = wandb_run
    assert config["config"] == yaml.safe_load((run / "config.yaml").read_text())
    # Lightning's hyper-parameters: the module's init arguments, nested as in the config
    assert config["peft"] == config["config"]["model"]["init_args"]["peft"]
    assert config["peft"]["init_args"]["r"] == 4


@needs_wandb
def test_wandb_gets_the_samples_as_a_table(wandb_run):
    run, files, history, _ = wandb_run
    [row] = [row for row in history if "samples" in row]
    assert row["trainer/global_step"] == STEPS
    table = json.loads((files / "files" / row["samples"]["path"]).read_text(encoding="utf-8"))
    expected = samples_at(run, STEPS)
    assert table["columns"] == list(expected[0])
    assert table["data"] == [list(sample.values()) for sample in expected]


# ------------------------------------------------------------------------------------- choosing, defaults, missing


def parsed_logger(*args: str) -> Namespace:
    config = ParseOnlyCLI(["--config", TINY, "--trainer.default_root_dir", "runs/my-run", *args], instantiate=False)
    return config.config.trainer.logger


@needs_mlflow
@needs_wandb
def test_the_logger_is_chosen_by_lightnings_own_keys_and_gets_run_defaults(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert parsed_logger().class_path == "lightning.pytorch.loggers.TensorBoardLogger"
    mlflow = parsed_logger("--trainer.logger", "MLFlowLogger")
    assert mlflow.class_path == "lightning.pytorch.loggers.MLFlowLogger"
    assert (mlflow.init_args.tracking_uri, mlflow.init_args.run_name) == (MLFLOW_DEFAULT_URI, "my-run")
    wandb = parsed_logger("--config", str(OVERLAYS / "wandb.yaml"))
    assert wandb.init_args.project == "lightft" and wandb.init_args.name == "my-run"
    assert wandb.init_args.save_dir == "runs/my-run"  # W&B's files in the run directory
    # what the user gives is kept
    given = parsed_logger("--trainer.logger", "MLFlowLogger", "--trainer.logger.init_args.tracking_uri", "http://x:5000",
                          "--trainer.logger.init_args.run_name", "mine")  # fmt: skip
    assert (given.init_args.tracking_uri, given.init_args.run_name) == ("http://x:5000", "mine")
    file_store = parsed_logger("--trainer.logger", "MLFlowLogger", "--trainer.logger.init_args.save_dir", "/tmp/ml")
    assert file_store.init_args.tracking_uri is None  # Lightning's file:<save_dir>
    wandb = parsed_logger("--trainer.logger", "WandbLogger", "--trainer.logger.init_args.save_dir", "/tmp/wb")
    assert wandb.init_args.save_dir == "/tmp/wb"


def test_a_missing_package_is_named_with_its_pip_command():
    everything_but = lambda missing: lambda module: module != missing  # noqa: E731
    with pytest.raises(
        LightFTError, match=r"^trainer.logger: MLFlowLogger needs mlflow: pip install 'lightft\[mlflow\]'$"
    ):
        check_installed(MLFlowLogger, Namespace(tracking_uri="http://x:5000"), everything_but("mlflow"))
    with pytest.raises(
        LightFTError, match=r"needs sqlalchemy \(for tracking_uri sqlite:///m.db\): pip install 'lightft"
    ):
        check_installed(MLFlowLogger, Namespace(tracking_uri="sqlite:///m.db"), everything_but("sqlalchemy"))
    check_installed(MLFlowLogger, Namespace(tracking_uri="http://x:5000"), everything_but("sqlalchemy"))  # a server
    with pytest.raises(
        LightFTError, match=r"^trainer.logger: WandbLogger needs wandb: pip install 'lightft\[wandb\]'$"
    ):
        check_installed(WandbLogger, Namespace(), everything_but("wandb"))
    check_installed(TensorBoardLogger, Namespace(), lambda module: False)


BLOCKER = """
import os, sys

BLOCKED = os.environ["BLOCKED"].split(",")


class Hidden:  # every finder answers "not found" for BLOCKED, as if the package were not installed
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] not in BLOCKED:
            return self.finder.find_spec(name, path, target)

    def __getattr__(self, name):
        return getattr(self.finder, name)


sys.meta_path[:] = [Hidden(finder) for finder in sys.meta_path]
"""


@pytest.mark.parametrize(("overlay", "package"), [("mlflow.yaml", "mlflow"), ("wandb.yaml", "wandb")])
def test_without_the_package_fit_says_the_pip_command_and_writes_nothing(tmp_path, overlay, package):
    (tmp_path / "shim").mkdir()
    (tmp_path / "shim" / "sitecustomize.py").write_text(BLOCKER)
    run = tmp_path / "my-run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("earlier: run\n")
    env = {"PYTHONPATH": f"{tmp_path / 'shim'}{os.pathsep}{ROOT}", "BLOCKED": package}
    result = lightft("--config", str(OVERLAYS / overlay), "--trainer.default_root_dir", str(run), "--overwrite", "true",
                     cwd=tmp_path, env=env)  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    name = {"mlflow": "MLFlowLogger", "wandb": "WandbLogger"}[package]
    expected = f"lightft: error: trainer.logger: {name} needs {package}: pip install 'lightft[{package}]'"
    assert result.stderr.strip().splitlines()[-1] == expected
    assert sorted(p.name for p in tmp_path.rglob("*") if "shim" not in p.parts) == [
        "checkpoints",
        "config.yaml",
        "my-run",
    ]
    assert (run / "config.yaml").read_text() == "earlier: run\n"
