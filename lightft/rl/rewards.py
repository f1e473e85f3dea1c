"""Rewards for on-policy RL: the `RewardFunction` protocol, a trained reward model as one, and rule rewards.

A reward function takes the rendered prompts, the completions (special tokens stripped) and the data's reference
answers, and returns one score per completion. Name your own by `class_path` in `model.init_args.reward`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from lightft.errors import LightFTError

KEY = "model.init_args.reward"


@runtime_checkable
class RewardFunction(Protocol):
    """Scores completions: one float per completion (higher is better).

    Any class with this `__call__` (the same parameter names) can be named by `class_path`; it need not subclass
    this protocol. The arguments are lists of strings; the answer one float per completion (a list, tuple, numpy
    array or tensor). They are annotated `Any` here so that jsonargparse accepts an implementation whatever its own
    annotations say (it compares a protocol's annotations with an implementation's exactly otherwise).
    """

    def __call__(self, prompts: Any, completions: Any, references: Any) -> Any:
        """Score `completions[i]`, the answer to `prompts[i]` (reference answer `references[i]`, may be empty)."""


def score(reward: RewardFunction, prompts: list[str], completions: list[str], references: list[str]) -> Tensor:
    """Call `reward` and check its answer: (N,) finite float32 scores, else a one-line error naming the class."""
    name = type(reward).__name__
    try:
        scores = torch.as_tensor(reward(prompts, completions, references), dtype=torch.float32).detach().cpu()
    except LightFTError:
        raise
    except Exception as err:
        raise LightFTError(f"{KEY} ({name}): raised {type(err).__name__}: {err}; fix the reward function.") from err
    if scores.shape != (len(completions),):
        raise LightFTError(
            f"{KEY} ({name}): returned shape {tuple(scores.shape)} for {len(completions)} completions; return one "
            "float per completion."
        )
    if not torch.isfinite(scores).all():
        raise LightFTError(f"{KEY} ({name}): returned a non-finite score; return finite floats.")
    return scores


class KeywordReward:
    """Rule reward: how often `keyword` occurs in the completion.

    Args:
        keyword: Text to look for.
        per_char: Divide the count by the completion's length in characters (a density in [0, 1]), so the reward
            rises only by emitting the keyword more, not by writing more.
    """

    def __init__(self, keyword: str, per_char: bool = True) -> None:
        if not keyword:
            raise LightFTError(f"{KEY}.init_args.keyword: must not be empty.")
        self.keyword, self.per_char = keyword, per_char

    def __call__(self, prompts: list[str], completions: list[str], references: list[str]) -> Sequence[float] | Tensor:
        """Keyword count (or density) per completion."""
        counts = [c.count(self.keyword) for c in completions]
        if not self.per_char:
            return [float(n) for n in counts]
        return [n * len(self.keyword) / max(1, len(c)) for n, c in zip(counts, completions, strict=True)]


class JSONMatchReward:
    """Rule reward for structured output: the fraction of the reference JSON record's fields reproduced exactly.

    A completion that is not a JSON object scores `invalid` (default 0); an exact record scores 1.

    Args:
        invalid: Score of a completion that does not parse as a JSON object.
    """

    def __init__(self, invalid: float = 0.0) -> None:
        self.invalid = invalid

    def __call__(self, prompts: list[str], completions: list[str], references: list[str]) -> Sequence[float] | Tensor:
        """Per completion: matched fields / reference fields."""
        return [self._one(c, r) for c, r in zip(completions, references, strict=True)]

    def _one(self, completion: str, reference: str) -> float:
        try:
            got, want = json.loads(completion.strip()), json.loads(reference)
        except json.JSONDecodeError:
            return self.invalid
        if not isinstance(got, dict) or not isinstance(want, dict) or not want:
            return self.invalid
        return fields_matched(got, want)


def fields_matched(record: dict, reference: dict) -> float:
    """The fraction of `reference`'s fields that `record` holds with exactly the same value (extra fields are free)."""
    return sum(record.get(k) == v for k, v in reference.items()) / len(reference)


def strict_json(completion: str) -> bool:
    """Whether the whole completion (surrounding whitespace aside) is exactly one JSON object, and nothing else.

    The "bare record" preference of the data/rlhf task (what its evaluation reports): `{"a": 1}` is strict; the same
    object followed by a line such as "Order logged.", inside a fenced json block, or the array `[1]`, is not.
    """
    try:
        return isinstance(json.loads(completion), dict)
    except json.JSONDecodeError:
        return False


def find_record(text: str) -> dict | None:
    """The first JSON object inside `text` (which may surround it with other text), or None."""
    decoder, start = json.JSONDecoder(), text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            return value
        start = text.find("{", start + 1)
    return None


class StrictJSONReward:
    """Rule reward for a bare JSON record: field accuracy, discounted when the record is surrounded by other text.

    Stands in for the rankings of a consumer that parses the whole answer as JSON (the data/rlhf task). With `f` the
    fraction of the reference record's fields reproduced exactly (`fields_matched`):

        reward = f                  the completion is exactly one JSON object (`strict_json`)
                 surrounded * f     the first JSON object inside other text (a chatty "Order logged." line, a fence)
                 invalid            no JSON object at all, or a reference without one

    So a right bare record (1) beats a bare record with one of five fields wrong (0.8), which beats the right record
    with a line after it (0.5 at the default). The reference may itself be surrounded by text (its first object is
    used). `surrounded=1.0` gives field accuracy whatever surrounds the record.

    Args:
        surrounded: Multiplier of the field fraction when text surrounds the record, in [0, 1].
        invalid: Score of a completion without a JSON object.
    """

    def __init__(self, surrounded: float = 0.5, invalid: float = 0.0) -> None:
        if not 0.0 <= surrounded <= 1.0:
            raise LightFTError(f"{KEY}.init_args.surrounded: {surrounded} is not in [0, 1].")
        self.surrounded, self.invalid = surrounded, invalid

    def __call__(self, prompts: list[str], completions: list[str], references: list[str]) -> Sequence[float] | Tensor:
        """Per completion: matched fields / reference fields, times `surrounded` unless the record stands alone."""
        return [self._one(c, r) for c, r in zip(completions, references, strict=True)]

    def _one(self, completion: str, reference: str) -> float:
        got, want = find_record(completion), find_record(reference)
        if got is None or not want:
            return self.invalid
        return fields_matched(got, want) * (1.0 if strict_json(completion) else self.surrounded)


def _template_turn(tokenizer: Any) -> tuple[str, str]:
    """(the chat template's assistant header, the text it writes after an assistant message); ("", "") without a
    template or when the template does not render a turn around its content.
    """  # noqa: D205
    if not getattr(tokenizer, "chat_template", None):
        return "", ""
    marker, user = "\u2063lightft\u2063", [{"role": "user", "content": "q"}]
    try:
        bare = tokenizer.apply_chat_template(user, tokenize=False)
        asking = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        turn = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": marker}], tokenize=False)
    except Exception:  # a template that cannot render this probe: fall back to EOS
        return "", ""
    if not asking.startswith(bare) or marker not in turn:
        return "", ""
    return asking[len(bare) :], turn[turn.rindex(marker) + len(marker) :]


class RewardModelScorer:
    """A trained reward model as a reward function: an exported directory (`lightft export --merge true`) or any
    `*ForSequenceClassification` checkpoint with one label, scoring the text training scored: `prompt + completion`
    + the chat template's end of an assistant turn (a chat prompt) or EOS (plain text), with its own tokenizer. It
    is loaded on first use, frozen, on the device it is moved to by `to`.

    Args:
        path: Directory of the reward model (transformers format).
        batch_size: Completions scored per forward pass.
        max_length: Longer texts keep their end (the completion).
    """  # noqa: D205

    def __init__(self, path: str, batch_size: int = 8, max_length: int = 1024) -> None:
        self.path, self.batch_size, self.max_length = path, batch_size, max_length
        self.device = torch.device("cpu")
        self._model = self._tokenizer = None
        self._turn: tuple[str, str] | None = None  # (assistant header, text after an assistant turn)

    def to(self, device: torch.device) -> RewardModelScorer:
        """Score on `device` (the policy's)."""
        self.device = torch.device(device)
        if self._model is not None:
            self._model.to(self.device)
        return self

    def weight_bytes(self) -> float:
        """Bytes of the reward model's weights at its config's dtype, from its config alone (nothing loads)."""
        from lightft.models.loading import ModelSpec, meta_model

        model = meta_model(ModelSpec(path=self.path), key=f"{KEY}.init_args.path", head="reward")
        dtype = getattr(model.config, "dtype", None) or torch.float32
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        return float(sum(p.numel() for p in model.parameters()) * dtype.itemsize)

    def _end_of_turn(self, prompt: str) -> str:
        """What training put after a completion: the chat template's text after an assistant turn (ChatML's
        `<|im_end|>` and newline) when the prompt ends with the template's assistant header, else EOS. The score is
        read at the last token, so it must be the token the reward model was trained to score at.
        """  # noqa: D205
        if self._turn is None:
            self._turn = _template_turn(self._tokenizer)
        header, after = self._turn
        return after if header and prompt.endswith(header) else (self._tokenizer.eos_token or "")

    def _load(self) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not Path(self.path).is_dir():
            raise LightFTError(f"{KEY}.init_args.path: reward model directory '{self.path}' not found.")
        self._tokenizer = AutoTokenizer.from_pretrained(self.path)
        self._tokenizer.truncation_side = "left"
        model = AutoModelForSequenceClassification.from_pretrained(self.path)
        self._model = model.requires_grad_(False).eval().to(self.device)

    @torch.no_grad()
    def __call__(self, prompts: list[str], completions: list[str], references: list[str]) -> Sequence[float] | Tensor:
        """The reward model's scalar score of each prompt + completion."""
        if self._model is None:
            self._load()
        texts = [p + c + self._end_of_turn(p) for p, c in zip(prompts, completions, strict=True)]
        scores = []
        for i in range(0, len(texts), self.batch_size):
            enc = self._tokenizer(
                texts[i : i + self.batch_size],
                add_special_tokens=False,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            scores.append(self._model(**enc).logits.squeeze(-1).float().cpu())
        return torch.cat(scores)
