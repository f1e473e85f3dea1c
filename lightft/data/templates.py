"""Examples -> token ids and labels, with loss only on assistant / completion tokens.

Conversations are rendered with the tokenizer's chat template turn by turn: the trained characters of assistant
turn i are those between render(messages[:i], add_generation_prompt=True) and render(messages[:i+1]) (ending at the
turn's EOS). The full text is tokenized once and a token trains when it starts inside a trained span, so the ids are
exactly the template's ids. Label 0 is always ignored: no token predicts it (this also keeps packing exact).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

from lightft.data.formats import Example
from lightft.errors import LightFTError
from lightft.losses.sft import IGNORE_INDEX

Truncation = Literal["right", "left", "drop"]
Span = tuple[int, int]


@dataclass(frozen=True)
class Encoded:
    """Token ids and labels (IGNORE_INDEX where no loss) of one example."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False
    weights: list[float] | None = None  # per-token loss weights (trained tokens), None when all are 1

    @property
    def n_trained(self) -> int:
        """Number of tokens that carry loss."""
        return sum(label != IGNORE_INDEX for label in self.labels)


class ExampleEncoder:
    """Tokenizes `Example`s for one tokenizer, length limit and truncation policy.

    Args:
        tokenizer: A tokenizer fixed up by `lightft.models.loading.load_tokenizer`.
        max_length: Longest sequence in tokens.
        truncation: `right` keeps the first `max_length` tokens, `left` the last ones (keeps the final answer),
            `drop` discards longer examples.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int, truncation: Truncation = "right") -> None:
        self.tokenizer, self.max_length, self.truncation = tokenizer, max_length, truncation
        with_special = tokenizer("x")["input_ids"]
        bare = tokenizer("x", add_special_tokens=False)["input_ids"]
        start = next((i for i in range(len(with_special)) if with_special[i : i + len(bare)] == bare), 0)
        self.prefix_ids: list[int] = with_special[:start]  # e.g. BOS
        self.adds_eos = tokenizer.eos_token_id in with_special[start + len(bare) :]

    def encode(self, example: Example) -> Encoded | None:
        """Ids and labels of a full example; None when `truncation='drop'` and it is too long."""
        weights = None
        if example.conversational:
            text, spans = conversation_spans(self.tokenizer, example.messages, example.trained_turns, example.tools)
            ids, labels = self._tokenize(text, spans)
            if example.weights:  # a weight per trained turn: each of its tokens carries it
                span_weights = [example.weights.get(i, 1.0) for i in example.trained_turns]
                weights = self._token_weights(text, spans, span_weights, ids)
        else:
            ids, labels = self._plain(example.segments)
        return self._truncate(ids, labels, weights)

    def encode_prompt(self, example: Example) -> list[int]:
        """Ids of a generation prompt (chat template with the assistant header, or BOS + plain text)."""
        if example.conversational:
            text = render(self.tokenizer, example.messages, add_generation_prompt=True, tools=example.tools)
            return self._tokenize(text, [])[0]
        text = "".join(s for s, _ in example.segments)
        return self.prefix_ids + self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _plain(self, segments: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
        text, spans, pos = "", [], 0
        for segment, trained in segments:
            if trained:
                spans.append((pos, pos + len(segment)))
            text, pos = text + segment, pos + len(segment)
        ids, labels = self._tokenize(text, spans)
        eos = self.tokenizer.eos_token_id
        ids, labels = self.prefix_ids + ids, [IGNORE_INDEX] * len(self.prefix_ids) + labels
        if eos is not None and not self.adds_eos:
            last_trained = bool(segments) and segments[-1][1]
            ids, labels = ids + [eos], labels + [eos if last_trained else IGNORE_INDEX]
        return ids, labels

    def _tokenize(self, text: str, spans: list[Span]) -> tuple[list[int], list[int]]:
        if not self.tokenizer.is_fast:
            return _tokenize_pieces(self.tokenizer, text, spans)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        offsets = enc["offset_mapping"]
        labels = [tid if _inside(start, spans) else IGNORE_INDEX for tid, (start, _) in zip(ids, offsets, strict=True)]
        return ids, labels

    def _token_weights(self, text: str, spans: list[Span], span_weights: list[float], ids: list[int]) -> list[float]:
        """Each token's loss weight: its trained span's weight (1.0 outside spans; those tokens carry no loss)."""
        if not self.tokenizer.is_fast:
            cuts = sorted({0, len(text), *[p for span in spans for p in span]})
            starts = []
            for start, end in itertools.pairwise(cuts):
                starts += [start] * len(self.tokenizer(text[start:end], add_special_tokens=False)["input_ids"])
        else:
            offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            starts = [start for start, _ in offsets]
        weights = [1.0] * len(ids)
        for t, start in enumerate(starts):
            for (a, b), w in zip(spans, span_weights, strict=True):
                if a <= start < b:
                    weights[t] = float(w)
        return weights

    def _truncate(self, ids: list[int], labels: list[int], weights: list[float] | None = None) -> Encoded | None:
        truncated = len(ids) > self.max_length
        if truncated:
            if self.truncation == "drop":
                return None
            keep = slice(0, self.max_length) if self.truncation == "right" else slice(len(ids) - self.max_length, None)
            ids, labels = ids[keep], labels[keep]
            weights = weights[keep] if weights is not None else None
        if labels:
            labels[0] = IGNORE_INDEX
        return Encoded(ids, labels, truncated, weights)


def _inside(position: int, spans: list[Span]) -> bool:
    return any(start <= position < end for start, end in spans)


def _tokenize_pieces(tokenizer: PreTrainedTokenizerBase, text: str, spans: list[Span]) -> tuple[list[int], list[int]]:
    """Slow-tokenizer fallback: tokenize the text between span boundaries piece by piece."""
    cuts = sorted({0, len(text), *[p for span in spans for p in span]})
    ids: list[int] = []
    labels: list[int] = []
    for start, end in itertools.pairwise(cuts):
        piece = tokenizer(text[start:end], add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if _inside(start, spans) else [IGNORE_INDEX] * len(piece)
    return ids, labels


def render(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """The chat template's text for `messages` (and the function schemas `tools`, when given)."""
    if not tokenizer.chat_template:
        raise LightFTError(
            f"tokenizer '{tokenizer.name_or_path}' has no chat template but the data is conversational; set "
            "model.init_args.model.chat_template (e.g. chatml) or use a plain prompt/completion dataset."
        )
    extra = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt, **extra)


def conversation_spans(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, Any]],
    trained_turns: list[int],
    tools: list[dict[str, Any]] | None = None,
) -> tuple[str, list[Span]]:
    """Full rendered text and the character spans of the trained turns (content + end-of-turn token)."""
    full = render(tokenizer, messages, add_generation_prompt=False, tools=tools)
    spans = []
    for i in trained_turns:
        before = _render_prefix(tokenizer, messages[:i], tools)
        upto = render(tokenizer, messages[: i + 1], add_generation_prompt=False, tools=tools)
        if not (upto.startswith(before) and full.startswith(upto)):
            raise LightFTError(
                f"the chat template of '{tokenizer.name_or_path}' does not render turn by turn (turn {i} changes "
                "earlier text), so assistant tokens cannot be located; set model.init_args.model.chat_template."
            )
        end = len(upto)
        eos = tokenizer.eos_token
        if eos and (k := upto.rfind(eos, len(before))) >= 0:
            end = k + len(eos)  # stop after the end-of-turn token; trailing newlines are not trained
        spans.append((len(before), end))
    return full, spans


def _render_prefix(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
) -> str:
    """Text before an assistant turn; some templates cannot render an empty conversation."""
    try:
        return render(tokenizer, messages, add_generation_prompt=True, tools=tools)
    except LightFTError:
        raise
    except Exception:
        if messages:
            raise
        return ""
