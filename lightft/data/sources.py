"""Where examples come from: local json/jsonl/parquet/csv files, a local dataset directory, or a Hub dataset.

Local JSON is checked line by line before `datasets` reads it, so a malformed record is reported as `file:line`.
Every row can be located for error messages (`train.jsonl:12`, `data.csv row 7`). Text must be UTF-8 (a byte order
mark is fine): a file that is not is reported as `file:line` with the fix, never as a `UnicodeDecodeError`.
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import datasets

from lightft.data.formats import Conversations, FormatName, TrainOn
from lightft.errors import LightFTError

LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
TEXT_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".txt")  # what `datasets` reads from a directory as text


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset split.

    Args:
        path: A local `.json`/`.jsonl`/`.parquet`/`.csv` file, a local dataset directory, or a Hub dataset name.
        format: `auto` (detected from the columns), `messages`, `prompt_completion`, `alpaca` or `text`.
        split: Split to read from a directory or Hub dataset.
        name: Hub dataset configuration name.
        columns: Map format fields to your columns, dotted paths reach into records:
            `{prompt: question, completion: answer.value}`.
        max_examples: Keep only the first N rows (quick runs, benchmarks).
        roles: Conversations: the dataset's role names -> `system`/`user`/`assistant`/`tool` (ShareGPT's `human`,
            `gpt`, `observation`, `function_call` are known): `{bot: assistant, narrator: system}`.
        train_on: Conversations: `all_assistant` turns train (except those marked `train: false` / `weight: 0`),
            or only the `last_assistant` turn.
        margin: Preference pairs' margin (reward models): `auto` takes a `margin` column when there is one,
            `scores` is `score_chosen - score_rejected` (UltraFeedback-style rows), `none` ignores both.
        weight: In a mixture (a list of sources): this source's share of the mixture, relative to the others'.
        examples: In a mixture: exactly this many examples of this source per epoch (drawn without repeats while
            the source has enough, seeded), instead of a weight.
    """

    path: str
    format: FormatName = "auto"
    split: str = "train"
    name: str | None = None
    columns: dict[str, str] | None = None
    max_examples: int | None = None
    roles: dict[str, str] | None = None
    train_on: TrainOn = "all_assistant"
    margin: Literal["auto", "scores", "none"] = "auto"
    weight: float | None = None
    examples: int | None = None

    @property
    def conversations(self) -> Conversations:
        """How conversations of this source are read (role names, trained turns)."""
        return Conversations(self.roles, self.train_on)

    def digest(self) -> str | None:
        """A content hash of the local file or directory and every reading option; None for a Hub dataset."""
        path = Path(self.path).expanduser()
        if path.is_file():
            files = [path]
        elif path.is_dir():
            files = sorted(f for f in path.rglob("*") if f.is_file() and not _hidden(f.relative_to(path)))
        else:
            return None
        content = hashlib.sha256()
        for file in files:
            content.update(str(file.relative_to(path) if path.is_dir() else file.suffix).encode() + b"\0")
            with file.open("rb") as handle:
                for block in iter(lambda h=handle: h.read(1 << 22), b""):
                    content.update(block)
        options = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("path", "weight", "examples")}
        content.update(json.dumps(options, sort_keys=True, default=str).encode())
        return content.hexdigest()


Locator = Callable[[int], str]


def load_rows(spec: DatasetSpec, key: str) -> tuple[datasets.Dataset, Locator]:
    """Read the rows of `spec` and a function naming row i for error messages."""
    path = Path(spec.path).expanduser()
    if path.suffix in LOCAL_BUILDERS or path.exists():
        dataset, where = _load_local(path, spec, key)
    else:
        dataset, where = _load_hub(spec, key), (lambda i: f"{spec.path}[{spec.split}] row {i}")
    if spec.max_examples is not None:
        dataset = dataset.select(range(min(spec.max_examples, len(dataset))))
    return dataset, where


def _load_local(path: Path, spec: DatasetSpec, key: str) -> tuple[datasets.Dataset, Locator]:
    if not path.exists():
        raise LightFTError(f"{key}.path: data file '{path}' not found (relative to {Path.cwd()}); fix the path.")
    if path.is_dir():
        for file in _text_files(path):  # arrow keeps invalid UTF-8 in JSON strings and fails only when a row is read
            check_utf8(file)
        return _read(lambda: datasets.load_dataset(str(path), split=spec.split), path), (lambda i: f"{path} row {i}")
    builder = LOCAL_BUILDERS.get(path.suffix)
    if builder is None:
        raise LightFTError(f"{key}.path: '{path}' is not .json, .jsonl, .parquet or .csv; convert it or rename it.")
    where: Locator = lambda i: f"{path} row {i}"  # noqa: E731
    if builder == "json":
        lines = check_json(path)
        where = (lambda i: f"{path}:{lines[i]}") if lines else (lambda i: f"{path} record {i}")
    elif builder == "csv":
        where = lambda i: f"{path}:{i + 2}"  # noqa: E731 - header is line 1
    dataset = _read(lambda: datasets.load_dataset(builder, data_files=str(path), split="train"), path)
    return dataset, where


def _read(load: Callable[[], datasets.Dataset], path: Path) -> datasets.Dataset:
    try:
        return load()
    except Exception as err:  # datasets/arrow raise many types; the user needs the file and the first line
        if path.is_file() and _caused_by(err, UnicodeDecodeError):
            check_utf8(path)  # names the line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LightFTError(
            f"{path}: datasets could not read it ({first}); every record must have the same fields and types."
        ) from err


def check_json(path: Path) -> list[int]:
    """Validate a JSON-lines or JSON-array file; returns the line number of each record (JSON lines) or []."""
    text = read_text(path)
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise LightFTError(f"{path}:{err.lineno}: malformed JSON ({err.msg}, column {err.colno}); fix it.") from err
        _check_objects(path, records, lambda i: f"{path} record {i}")
        return []
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise LightFTError(
                f"{path}:{number}: malformed JSON line ({err.msg}, column {err.colno}); fix or remove the line."
            ) from err
        _check_objects(path, [record], lambda _, n=number: f"{path}:{n}")
        lines.append(number)
    if not lines:
        raise LightFTError(f"{path}: the file holds no records; add examples or point to another file.")
    return lines


def read_text(path: Path) -> str:
    """The text of a UTF-8 file (without its byte order mark, if any); else a LightFTError naming the line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        check_utf8(path)  # raises, naming the line
        raise


def check_utf8(path: Path, chunk_size: int = 1 << 24) -> None:
    """Raise a one-line LightFTError naming the line and the byte when `path` is not UTF-8 (read in chunks)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line, offset = 1, 0  # the line at the start of `chunk`, and where `chunk` starts in the file
    with path.open("rb") as file:
        while True:
            chunk = file.read(chunk_size)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                # err.object is `chunk` after the bytes of a character the decoder held back from the last chunk
                at = offset + len(chunk) - len(err.object) + err.start
                line += chunk[: max(0, at - offset)].count(b"\n")
                raise LightFTError(
                    f"{path}:{line}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {at}); save the file "
                    "as UTF-8 (e.g. iconv -f <its encoding> -t utf-8)."
                ) from err
            if not chunk:
                return
            line += chunk.count(b"\n")
            offset += len(chunk)


def _text_files(directory: Path) -> list[Path]:
    """The text data files under `directory`, hidden files and folders left out (as `datasets` does)."""
    files = [f for f in directory.rglob("*") if f.suffix in TEXT_SUFFIXES and f.is_file()]
    return sorted(f for f in files if not _hidden(f.relative_to(directory)))


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _caused_by(err: BaseException | None, kind: type[BaseException]) -> bool:
    """Whether `err` or an exception it was raised from or during is a `kind`."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, kind):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


def _check_objects(path: Path, records: object, where: Locator) -> None:
    if not isinstance(records, list):
        raise LightFTError(f"{path}: expected a list of JSON objects; write one object per line (JSON lines).")
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise LightFTError(f"{where(i)}: expected a JSON object, got {type(record).__name__}.")


def _load_hub(spec: DatasetSpec, key: str) -> datasets.Dataset:
    try:
        return datasets.load_dataset(spec.path, spec.name, split=spec.split)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LightFTError(
            f"{key}.path: '{spec.path}' is not a local file and could not be loaded from the Hub ({first}); "
            "fix the path or the dataset name/split."
        ) from err
