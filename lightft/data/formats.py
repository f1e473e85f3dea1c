"""Dataset formats (TRL's field names) -> normalised `Example`s.

SFT formats: conversational `messages`; `prompt`/`completion` (plain strings or lists of messages); alpaca
`instruction`/`input`/`output`; plain `text`. Preference formats (encoded by `lightft.data.preference`):
`prompt`/`chosen`/`rejected` and implicit-prompt `chosen`/`rejected` (a pair of examples, `to_pair`), unpaired
`prompt`/`completion`/`label` (KTO, `to_unpaired`); and `prompt` alone for RL. A column mapping renames a dataset's
own fields (dotted paths reach into nested records, e.g. `{prompt: question, completion: answer.value}`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from lightft.errors import LightFTError

FormatName = Literal[
    "auto",
    "messages",
    "prompt_completion",
    "alpaca",
    "text",
    "preference",
    "implicit_preference",
    "unpaired_preference",
    "prompt_only",
]
# in order of detection preference (TRL's field names)
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "preference": ("prompt", "chosen", "rejected"),
    "implicit_preference": ("chosen", "rejected"),
    "unpaired_preference": ("prompt", "completion", "label"),
    "prompt_completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
    "text": ("text",),
    "prompt_only": ("prompt",),
}
SFT_FORMATS = ("messages", "prompt_completion", "alpaca", "text")
ROLES = ("system", "user", "assistant", "tool")
ALPACA_PROMPT = (
    "Below is an instruction that describes a task{context}. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\n{instruction}\n\n{input_block}### Response:\n"
)


@dataclass
class Example:
    """One training example before tokenization.

    Either a conversation (`messages`, with the indices of the turns that train) or plain text `segments`
    (text, trains) joined without a template.
    """

    messages: list[dict[str, str]] = field(default_factory=list)
    trained_turns: list[int] = field(default_factory=list)
    segments: list[tuple[str, bool]] = field(default_factory=list)

    @property
    def conversational(self) -> bool:
        """True when the chat template renders this example."""
        return bool(self.messages)


def detect_format(columns: list[str], where: str, allowed: tuple[str, ...] = SFT_FORMATS) -> str:
    """Pick the first of the `allowed` formats whose required fields are all present, in TRL's order of preference."""
    for name, needed in REQUIRED_FIELDS.items():
        if name in allowed and all(c in columns for c in needed):
            return name
    raise LightFTError(
        f"{where}: cannot tell the format from the columns {sorted(columns)}; set format: "
        f"({' | '.join(allowed)}) and map your fields with columns: {{prompt: my_field, ...}}."
    )


def check_columns(fmt: str, columns: list[str], where: str, allowed: tuple[str, ...] = SFT_FORMATS) -> None:
    """Fail when the format does not suit this kind of data, or a field it needs is not a column of the dataset."""
    if fmt not in allowed:
        raise LightFTError(f"{where}: format '{fmt}' is not one this data module reads; use one of {list(allowed)}.")
    missing = [c for c in REQUIRED_FIELDS[fmt] if c not in columns]
    if missing:
        raise LightFTError(
            f"{where}: format '{fmt}' needs field(s) {missing} but the columns are {sorted(columns)}; "
            f"map them with columns: {{{missing[0]}: <your column>}} or pick another format."
        )


def remap(row: Mapping[str, Any], columns: Mapping[str, str]) -> dict[str, Any]:
    """Apply a {format field: dataset column (dotted path)} mapping to one row."""
    out = dict(row)
    for target, source in columns.items():
        value: Any = row
        for part in source.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        out[target] = value
    return out


def to_example(row: Mapping[str, Any], fmt: str, conversational_alpaca: bool, where: str) -> Example:
    """Convert one row of a dataset in format `fmt` to an `Example`; `where` names the row in errors."""
    for name in REQUIRED_FIELDS[fmt]:
        if row.get(name) is None:
            raise LightFTError(f"{where}: field '{name}' is missing or null (format {fmt}); fix the row or drop it.")
    if fmt == "messages":
        messages = _messages(row["messages"], "messages", where)
        return Example(messages, [i for i, m in enumerate(messages) if m["role"] == "assistant"])
    if fmt == "prompt_completion":
        return prompt_completion(row["prompt"], row["completion"], where)
    if fmt == "alpaca":
        return _alpaca(row, conversational_alpaca, where)
    if fmt == "text":
        return Example(segments=[(_text(row["text"], "text", where), True)])
    if fmt == "prompt_only":
        return prompt_example(row["prompt"], where)
    # preference formats: the chosen (or the given) completion
    return to_unpaired(row, where)[0] if fmt == "unpaired_preference" else to_pair(row, fmt, where)[0]


def _text(value: Any, name: str, where: str) -> str:
    if not isinstance(value, str):
        raise LightFTError(f"{where}: field '{name}' must be a string, got {type(value).__name__}.")
    return value


def _messages(value: Any, name: str, where: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise LightFTError(f"{where}: field '{name}' must be a non-empty list of {{role, content}} messages.")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, Mapping) or message.get("role") not in ROLES:
            raise LightFTError(f"{where}: {name}[{i}] needs a role in {ROLES}, got {message!r:.80}.")
        messages.append(
            {"role": message["role"], "content": _text(message.get("content"), f"{name}[{i}].content", where)}
        )
    return messages


def prompt_completion(prompt: Any, completion: Any, where: str, name: str = "completion") -> Example:
    """A prompt and its trained completion (field `name`), both plain strings or both lists of messages."""
    if isinstance(prompt, list) or isinstance(completion, list):
        prompt_msgs = _messages(prompt, "prompt", where)
        completion_msgs = _messages(completion, name, where)
        messages = prompt_msgs + completion_msgs
        trained = [i for i in range(len(prompt_msgs), len(messages)) if messages[i]["role"] == "assistant"]
        return Example(messages, trained)
    return Example(segments=[(_text(prompt, "prompt", where), False), (_text(completion, name, where), True)])


def prompt_example(prompt: Any, where: str) -> Example:
    """A prompt with nothing to train: a list of messages or a plain string (not empty: nothing to continue)."""
    if isinstance(prompt, list):
        return Example(_messages(prompt, "prompt", where), [])
    if not _text(prompt, "prompt", where).strip():
        raise LightFTError(f"{where}: field 'prompt' is empty; a generation prompt needs text (fix or drop the row).")
    return Example(segments=[(prompt, False)])


def _alpaca(row: Mapping[str, Any], conversational: bool, where: str) -> Example:
    instruction = _text(row["instruction"], "instruction", where)
    context = _text(row.get("input") or "", "input", where)
    output = _text(row["output"], "output", where)
    if conversational:
        user = f"{instruction}\n\n{context}" if context else instruction
        return Example([{"role": "user", "content": user}, {"role": "assistant", "content": output}], [1])
    prompt = ALPACA_PROMPT.format(
        context=", paired with an input that provides further context" if context else "",
        instruction=instruction,
        input_block=f"### Input:\n{context}\n\n" if context else "",
    )
    return Example(segments=[(prompt, False), (output, True)])


def prompt_only(example: Example) -> Example:
    """The part of an example a model is asked to continue (for generation): drop the trained tail."""
    if example.conversational:
        first_trained = example.trained_turns[0] if example.trained_turns else len(example.messages)
        return Example(example.messages[:first_trained], [])
    return Example(segments=[s for s in example.segments if not s[1]])


def to_pair(row: Mapping[str, Any], fmt: str, where: str) -> tuple[Example, Example]:
    """(prompt + chosen, prompt + rejected) of one preference row."""
    for name in ("chosen", "rejected") if fmt == "implicit_preference" else ("prompt", "chosen", "rejected"):
        if row.get(name) is None:
            raise LightFTError(f"{where}: field '{name}' is missing or null (format {fmt}); fix the row or drop it.")
    if row["chosen"] == row["rejected"]:
        raise LightFTError(
            f"{where}: 'chosen' and 'rejected' are identical, a pair that teaches nothing; fix the row or drop it."
        )
    if fmt == "implicit_preference":
        prompt, chosen, rejected = split_implicit_prompt(row["chosen"], row["rejected"], where)
    else:
        prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
    return prompt_completion(prompt, chosen, where, "chosen"), prompt_completion(prompt, rejected, where, "rejected")


def to_unpaired(row: Mapping[str, Any], where: str) -> tuple[Example, bool]:
    """(prompt + completion, desirable) of one KTO row."""
    for name in ("prompt", "completion", "label"):
        if row.get(name) is None:
            raise LightFTError(f"{where}: field '{name}' is missing or null (format unpaired_preference); fix the row.")
    label = row["label"]
    if not isinstance(label, bool):
        raise LightFTError(f"{where}: field 'label' must be true (desirable) or false (undesirable), got {label!r}.")
    return prompt_completion(row["prompt"], row["completion"], where), label


def split_implicit_prompt(chosen: Any, rejected: Any, where: str) -> tuple[Any, Any, Any]:
    """(prompt, chosen completion, rejected completion) from two full texts or conversations sharing a beginning."""
    if isinstance(chosen, list) and isinstance(rejected, list):
        k = 0
        while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
            k += 1
        if k == 0 or k == len(chosen) or k == len(rejected):
            raise LightFTError(
                f"{where}: 'chosen' and 'rejected' must share leading messages (the prompt) and then differ; "
                "give an explicit 'prompt' field instead."
            )
        return chosen[:k], chosen[k:], rejected[k:]
    if isinstance(chosen, str) and isinstance(rejected, str):
        k = 0
        while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
            k += 1
        k = chosen.rfind(" ", 0, k + 1) + 1 if k < len(chosen) and " " in chosen[:k] else k  # cut at a word start
        if k == 0 or k == len(chosen) or k == len(rejected):
            raise LightFTError(
                f"{where}: 'chosen' and 'rejected' share no prompt text (or one contains the other); give an "
                "explicit 'prompt' field instead."
            )
        return chosen[:k], chosen[k:], rejected[k:]
    raise LightFTError(f"{where}: 'chosen' and 'rejected' must both be strings or both be lists of messages.")
