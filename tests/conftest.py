"""Shared fixtures: the tiny Llama (2 layers, hidden 64) and its tokenizer, built in-process; no network."""

from __future__ import annotations

import os
import tempfile

# Offline before huggingface_hub is imported (it reads these once): a Hub lookup fails at once instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# encodings cached by content (lightft.data.cache) in a directory of this test session, shared by its subprocesses
os.environ.setdefault("LIGHTFT_CACHE", tempfile.mkdtemp(prefix="lightft-test-cache-"))

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from lightft.models.loading import ModelSpec, load_model, load_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "assets" / "tiny-llama"
QUICKSTART = ROOT / "data" / "quickstart"


@pytest.fixture(scope="session")
def tiny_spec() -> ModelSpec:
    return ModelSpec(str(TINY), random_init=True, seed=0)


@pytest.fixture(scope="session")
def tokenizer(tiny_spec):
    return load_tokenizer(tiny_spec)


@pytest.fixture
def tiny_model(tiny_spec, tokenizer):
    return load_model(tiny_spec, tokenizer)


@pytest.fixture(scope="session")
def tiny_weights_dir(tmp_path_factory, tiny_spec, tokenizer) -> Path:
    """The tiny model saved as a real checkpoint (weights + tokenizer), for loading-from-disk paths."""
    out = tmp_path_factory.mktemp("tiny-weights")
    model = load_model(tiny_spec, tokenizer)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def write_jsonl(path: Path, rows: list) -> Path:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def chat(user: str, assistant: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def cpu_trainer(tmp_path: Path, **kwargs):
    """A quiet one-process CPU Trainer writing under `tmp_path` (no logger, no checkpoints unless asked)."""
    import lightning.pytorch as pl

    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        default_root_dir=tmp_path,
    )
    return pl.Trainer(**{**defaults, **kwargs})
