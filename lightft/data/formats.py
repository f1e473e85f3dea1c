"""Dataset formats (TRL's field names) -> normalised `Example`s.

SFT formats: conversational `messages`; ShareGPT `conversations` (`{from, value}` turns, roles human/gpt/system/
tool/observation/function_call, other names through a `roles` mapping, optional `system` and `tools` columns);
`prompt`/`completion` (plain strings or lists of messages); alpaca `instruction`/`input`/`output`; plain `text`.
Conversations may carry tools: `tool_calls` on assistant turns (arguments a JSON object or its text), `tool` turns
(never trained) and a `tools` column of function schemas handed to the chat template. A message's `train: false`
or `weight: w` (a loss weight >= 0; 0 = not trained) and the source's `train_on` (`all_assistant` or
`last_assistant`) choose what trains. Preference formats (encoded by `lightft.data.preference`):
`prompt`/`chosen`/`rejected` and implicit-prompt `chosen`/`rejected` (a pair of examples, `to_pair`), unpaired
`prompt`/`completion`/`label` (KTO, `to_unpaired`); and `prompt` alone for RL. A column mapping renames a dataset's
own fields (dotted paths reach into nested records, e.g. `{prompt: question, completion: answer.value}`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from lightft.errors import LightFTError

FormatName = Literal[
    "auto",
    "messages",
    "sharegpt",
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
    "sharegpt": ("conversations",),
    "preference": ("prompt", "chosen", "rejected"),
    "implicit_preference": ("chosen", "rejected"),
    "unpaired_preference": ("prompt", "completion", "label"),
    "prompt_completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
    "text": ("text",),
    "prompt_only": ("prompt",),
}
SFT_FORMATS = ("messages", "sharegpt", "prompt_completion", "alpaca", "text")
CONVERSATION_FORMATS = ("messages", "sharegpt")
ROLES = ("system", "user", "assistant", "tool")
# ShareGPT's role names (`from`), LLaMA-Factory's included; a source's `roles` mapping adds or overrides names
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "tool": "tool", "observation": "tool", "function_call": "assistant"}  # fmt: skip
TrainOn = Literal["all_assistant", "last_assistant"]
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

    messages: list[dict[str, Any]] = field(default_factory=list)
    trained_turns: list[int] = field(default_factory=list)
    segments: list[tuple[str, bool]] = field(default_factory=list)
    weights: dict[int, float] = field(default_factory=dict)  # trained turn -> loss weight, when not 1
    tools: list[dict[str, Any]] | None = None  # function schemas for the chat template

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


@dataclass(frozen=True)
class Conversations:
    """How a source's conversations are read: role names and which assistant turns train.

    Args:
        roles: The dataset's role names -> lightft's (`system`, `user`, `assistant`, `tool`), on top of
            ShareGPT's usual names (`human`, `gpt`, `observation`, `function_call`, ...).
        train_on: `all_assistant` (every assistant turn not marked `train: false` / `weight: 0`) or
            `last_assistant` (only the conversation's last assistant turn).
    """

    roles: Mapping[str, str] | None = None
    train_on: TrainOn = "all_assistant"


def to_example(
    row: Mapping[str, Any],
    fmt: str,
    conversational_alpaca: bool,
    where: str,
    conversations: Conversations = Conversations(),
) -> Example:
    """Convert one row of a dataset in format `fmt` to an `Example`; `where` names the row in errors."""
    for name in REQUIRED_FIELDS[fmt]:
        if row.get(name) is None:
            raise LightFTError(f"{where}: field '{name}' is missing or null (format {fmt}); fix the row or drop it.")
    if fmt in CONVERSATION_FORMATS:
        return conversation(row, fmt, where, conversations)
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


def conversation(row: Mapping[str, Any], fmt: str, where: str, how: Conversations = Conversations()) -> Example:
    """A `messages` or ShareGPT `conversations` row: its turns, the trained ones (and their weights), its tools."""
    sharegpt = fmt == "sharegpt"
    name = "conversations" if sharegpt else "messages"
    roles = {**SHAREGPT_ROLES, **(how.roles or {})} if sharegpt else dict(how.roles or {})
    messages, marks = _parse_messages(row[name], name, where, roles)
    system = row.get("system")
    if sharegpt and isinstance(system, str) and system.strip() and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})  # LLaMA-Factory's `system` column
        marks.insert(0, {})
    assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if how.train_on == "last_assistant":
        assistant = assistant[-1:]
    trained = [i for i in assistant if marks[i].get("weight", 1.0) > 0]
    weights = {i: marks[i]["weight"] for i in trained if marks[i].get("weight", 1.0) != 1.0}
    return Example(messages, trained, weights=weights, tools=_tools(row.get("tools"), where))


def _parse_messages(
    value: Any, name: str, where: str, roles: Mapping[str, str]
) -> tuple[list[dict[str, Any]], list[dict[str, float]]]:
    """Messages in the chat template's shape, and each one's training mark ({"weight": w} when given)."""
    if not isinstance(value, list) or not value:
        raise LightFTError(f"{where}: field '{name}' must be a non-empty list of {{role, content}} messages.")
    messages, marks = [], []
    for i, raw in enumerate(value):
        at = f"{name}[{i}]"
        if not isinstance(raw, Mapping):
            raise LightFTError(f"{where}: {at} must be a {{role, content}} object, got {raw!r:.80}.")
        given = raw.get("role", raw.get("from"))
        role = roles.get(given, given) if isinstance(given, str) else given
        if role not in ROLES:
            known = sorted(set(roles) | set(ROLES))
            raise LightFTError(
                f"{where}: {at} has role {given!r}, which is not one of {', '.join(known)}; map it in the data "
                f"source: roles: {{{given}: user|assistant|system|tool}}."
            )
        content = raw.get("content", raw.get("value"))
        message: dict[str, Any] = {"role": role}
        calls = raw.get("tool_calls")
        if given == "function_call" and calls is None:  # LLaMA-Factory: the value is the call's JSON
            calls, content = [_json(content, f"{at}.value", where)], ""
        if calls is not None:
            if role != "assistant":
                raise LightFTError(f"{where}: {at} has tool_calls but role {role!r}; only assistant turns call tools.")
            message["tool_calls"] = _tool_calls(calls, f"{at}.tool_calls", where)
            content = "" if content is None else content
        message["content"] = _text(content, f"{at}.content", where)
        for key in ("name", "tool_call_id"):  # a tool turn's function name and the call it answers
            if raw.get(key) is not None:
                message[key] = raw[key]
        messages.append(message)
        marks.append(_mark(raw, role, at, where))
    return messages, marks


def _mark(raw: Mapping[str, Any], role: str, at: str, where: str) -> dict[str, float]:
    """A message's `train` / `weight` as {"weight": w} (train: false -> 0); only assistant turns can train."""
    train, weight = raw.get("train"), raw.get("weight")
    if train is not None and not isinstance(train, bool):
        raise LightFTError(f"{where}: {at}.train must be true or false, got {train!r}.")
    if weight is not None and (isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0):
        raise LightFTError(f"{where}: {at}.weight must be a number >= 0 (0: not trained), got {weight!r}.")
    if role != "assistant" and (train or (weight or 0) > 0):
        raise LightFTError(
            f"{where}: {at} is a {role} turn marked to train; only assistant turns train (drop train/weight there)."
        )
    if train is False:
        return {"weight": 0.0}
    return {} if weight is None else {"weight": float(weight)}


def _json(value: Any, at: str, where: str) -> Any:
    """A JSON value given as itself or as its text; text that does not parse is an error naming where."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as err:
        raise LightFTError(
            f"{where}: {at} is not valid JSON ({err.msg}, column {err.colno}): {value!r:.60}; fix the row."
        ) from err


def _tool_calls(calls: Any, at: str, where: str) -> list[dict[str, Any]]:
    """OpenAI-style calls `{type: function, function: {name, arguments}}` (or `{name, arguments}`), arguments parsed."""
    if not isinstance(calls, list) or not calls:
        raise LightFTError(f"{where}: {at} must be a non-empty list of {{name, arguments}} calls.")
    out = []
    for k, call in enumerate(calls):
        function = call.get("function", call) if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise LightFTError(f"{where}: {at}[{k}] needs a function name: {{name, arguments}}, got {call!r:.80}.")
        arguments = _json(function.get("arguments", {}), f"{at}[{k}].arguments", where)
        if not isinstance(arguments, Mapping):
            raise LightFTError(f"{where}: {at}[{k}].arguments must be a JSON object, got {arguments!r:.60}.")
        entry: dict[str, Any] = {"type": "function", "function": {"name": function["name"], "arguments": arguments}}
        if isinstance(call, Mapping) and call.get("id") is not None:
            entry["id"] = call["id"]
        out.append(entry)
    return out


def _tools(value: Any, where: str) -> list[dict[str, Any]] | None:
    """The `tools` column: a list of function schemas (or its JSON text); None when absent or empty."""
    if value is None or value == "" or value == []:
        return None
    tools = _json(value, "tools", where)
    if not isinstance(tools, list) or not all(isinstance(t, Mapping) for t in tools):
        raise LightFTError(f"{where}: tools must be a list of function schemas (JSON objects), got {value!r:.60}.")
    return [dict(t) for t in tools]


def _messages(value: Any, name: str, where: str) -> list[dict[str, Any]]:
    """Plain messages (prompt / completion lists): roles as given, tool calls allowed, no training marks."""
    messages, marks = _parse_messages(value, name, where, {})
    if any(marks):
        raise LightFTError(f"{where}: {name}: train/weight marks apply to conversations (messages), not to {name}.")
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
        prompt, chosen, rejected = _strip_repeated_prompt(row["prompt"], row["chosen"], row["rejected"])
    return prompt_completion(prompt, chosen, where, "chosen"), prompt_completion(prompt, rejected, where, "rejected")


def _strip_repeated_prompt(prompt: Any, chosen: Any, rejected: Any) -> tuple[Any, Any, Any]:
    """UltraFeedback-binarized rows: `chosen`/`rejected` are whole conversations that repeat the `prompt` (a
    string: the last user turn of their shared beginning; or that beginning itself). Then the shared beginning is
    the prompt and the rest the completions; any other row is returned as it is.
    """  # noqa: D205
    if not (isinstance(chosen, list) and isinstance(rejected, list)):
        return prompt, chosen, rejected
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    shared = chosen[:k]
    users = [m for m in shared if isinstance(m, Mapping) and m.get("role") == "user"]
    repeats = shared == prompt if isinstance(prompt, list) else bool(users) and users[-1].get("content") == prompt
    if k == 0 or not repeats or k == len(chosen) or k == len(rejected):
        return prompt, chosen, rejected
    return shared, chosen[k:], rejected[k:]


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
