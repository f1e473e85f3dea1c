"""docker/Dockerfile, checked without a Docker engine: parsed into instructions, each COPY source exists, and the
GPU build installs torch from a CUDA index before anything that depends on it."""

import re
import shlex

from tests.conftest import ROOT

DOCKERFILE = ROOT / "docker" / "Dockerfile"
KNOWN = {"FROM", "ARG", "ENV", "RUN", "WORKDIR", "COPY", "ENTRYPOINT", "CMD", "LABEL", "EXPOSE", "USER", "SHELL"}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        pending += " " + stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            word, _, args = pending.strip().partition(" ")
            out.append((word.upper(), args.strip()))
            pending = ""
    assert not pending, "the Dockerfile ends inside a line continuation"
    return out


def test_dockerfile_parses_into_known_instructions():
    parsed = instructions()
    assert parsed[0][0] in ("FROM", "ARG") and all(word in KNOWN for word, _ in parsed), parsed
    assert next(args for word, args in parsed if word == "FROM").startswith("nvidia/cuda:")


def test_torch_comes_from_a_cuda_index_before_lightft():
    runs = [args for word, args in instructions() if word == "RUN"]
    torch_at = next(i for i, r in enumerate(runs) if re.search(r"pip install \"torch==", r))
    assert "--index-url" in runs[torch_at]
    lightft_at = next(i for i, r in enumerate(runs) if 'pip install ".[dev]"' in r)
    assert torch_at < lightft_at
    assert "--no-build-isolation" in runs[lightft_at] and "deepspeed" in runs[lightft_at]


def test_copy_sources_exist_and_entrypoint_is_lightft():
    parsed = instructions()
    for word, args in parsed:
        if word == "COPY":
            *sources, _ = shlex.split(args)
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repo"
    entrypoint = next(args for word, args in parsed if word == "ENTRYPOINT")
    assert entrypoint == '["lightft"]'
    assert ".venv" in (ROOT / ".dockerignore").read_text().split()
