"""`lightft chat` on the tiny model: prompts are the chat template of the whole conversation, old turns leave a full
context, answers stream; one session through a pseudo-terminal (two turns, /save, /reset, EOF); one-line refusals.
"""

import inspect
import io
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time

import pytest
import torch

from lightft.cli import main
from lightft.commands.chat import ChatSession, Conversation, chat, fit_context, prompt_ids
from lightft.errors import LightFTError
from lightft.generation import GenerationSettings
from lightft.models.loading import ModelSpec, load_model, load_tokenizer
from tests.conftest import ROOT

SYSTEM = "Be brief."


def _turns(*texts):
    roles = ["user", "assistant"] * len(texts)
    return [{"role": role, "content": text} for role, text in zip(roles, texts, strict=False)]


def _template_ids(tokenizer, messages):
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def test_the_prompt_is_the_chat_template_of_the_system_prompt_the_turns_and_the_message(tokenizer):
    conversation = Conversation(SYSTEM, _turns("hello", "hi, how can I help?"))
    messages = conversation.window("what did I say?")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    ids = prompt_ids(tokenizer, messages)
    assert ids == _template_ids(tokenizer, messages)
    assert "hi, how can I help?" in tokenizer.decode(ids) and tokenizer.decode(ids).endswith("assistant\n")


def test_the_oldest_turns_leave_the_prompt_when_it_outgrows_the_context(tokenizer):
    conversation = Conversation(SYSTEM, _turns("one", "first answer", "two", "second answer", "three", "third"))
    kept = [{"role": "system", "content": SYSTEM}, *_turns("three", "third", "four")]
    budget = len(_template_ids(tokenizer, kept))
    ids, dropped = fit_context(conversation, tokenizer, "four", budget)
    assert (dropped, conversation.start) == (2, 4) and ids == _template_ids(tokenizer, kept)
    assert len(conversation.record()["messages"]) == 7  # dropped from the prompt, not from the conversation
    with pytest.raises(LightFTError, match="shorter"):  # too long even alone: refused, nothing more dropped
        fit_context(conversation, tokenizer, "a much longer message " * 20, budget)
    assert conversation.start == 4


class Recorder(io.StringIO):
    """An output stream that keeps each flushed piece."""

    def __init__(self):
        super().__init__()
        self.pieces = []

    def flush(self):
        self.pieces.append(self.getvalue()[sum(map(len, self.pieces)) :])


def test_an_answer_streams_in_pieces_and_joins_the_conversation(tiny_model, tokenizer):
    session = ChatSession(tiny_model.eval(), tokenizer, GenerationSettings(max_new_tokens=12), SYSTEM)
    out = Recorder()
    answer = session.reply("hello", out)
    assert len([p for p in out.pieces if p]) > 2 and "".join(out.pieces).strip() == answer
    assert session.conversation.messages == _turns("hello", answer)
    session.budget = len(_template_ids(tokenizer, session.conversation.window("again", start=2)))
    session.reply("again", out)
    assert "dropped the oldest 1 turn(s)" in out.getvalue() and session.conversation.start == 2


class Terminal:
    """`lightft chat` in a pseudo-terminal: its input and output are a tty, as for a person typing."""

    def __init__(self, *args):
        leader, follower = os.openpty()
        command = [sys.executable, "-m", "lightft.cli", "chat", *args]
        env = {**os.environ, "TERM": "dumb", "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(command, stdin=follower, stdout=follower, stderr=follower, cwd=ROOT, env=env)
        os.close(follower)
        self.fd, self.text, self.position = leader, "", 0

    def expect(self, marker: str, timeout: float = 90) -> str:
        """Output up to and including the next `marker` (the process keeps running)."""
        deadline = time.monotonic() + timeout
        while marker not in self.text[self.position :]:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"no {marker!r} within {timeout}s; output:\n{self.text}"
            try:
                self.text += os.read(self.fd, 4096).decode(errors="replace").replace("\r\n", "\n")
            except OSError:  # the child closed the terminal
                raise AssertionError(f"exited before {marker!r}; output:\n{self.text}") from None
        end = self.text.index(marker, self.position) + len(marker)
        seen, self.position = self.text[self.position : end], end
        return seen

    def say(self, line: str) -> str:
        """Type a line; the output it causes, up to the next prompt."""
        os.write(self.fd, line.encode() + b"\n")
        return self.expect("you> ")


def _greedy(network, tokenizer, messages):
    """The tiny model's greedy answer to `messages`, computed here from the chat template."""
    ids = torch.tensor([_template_ids(tokenizer, messages)])
    config = GenerationSettings(max_new_tokens=8).config(tokenizer, network.generation_config)
    output = network.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
    return tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True).strip()


def test_a_conversation_in_a_terminal_keeps_history_saves_resets_and_leaves_on_eof(tmp_path, tiny_weights_dir):
    terminal = Terminal("--model", str(tiny_weights_dir), "--system", SYSTEM, "--max_new_tokens", "8")
    assert "prompt budget 504 tokens" in terminal.expect("you> ")  # context 512 - 8
    first = terminal.say("hello")
    assert terminal.process.poll() is None  # the answer is on screen while the process waits for the next line
    second = terminal.say("what did I say?")
    assert "unknown command '/nope'" in terminal.say("/nope")
    assert "saved 2 turn(s)" in terminal.say(f"/save {tmp_path / 'a.jsonl'}")
    assert "already exists" in terminal.say(f"/save {tmp_path / 'a.jsonl'}")
    assert "conversation cleared" in terminal.say("/reset")
    terminal.say("what did I say?")
    terminal.say(f"/save {tmp_path / 'b.jsonl'}")
    os.write(terminal.fd, b"\x04")  # Ctrl-D
    assert terminal.process.wait(timeout=30) == 0
    os.close(terminal.fd)

    [saved] = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    messages = saved["messages"]
    assert [(m["role"], m["content"]) for m in messages if m["role"] != "assistant"] == [
        ("system", SYSTEM), ("user", "hello"), ("user", "what did I say?")]  # fmt: skip
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    [after_reset] = [json.loads(line)["messages"] for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert [m["content"] for m in after_reset[:2]] == [SYSTEM, "what did I say?"] and len(after_reset) == 3

    tokenizer = load_tokenizer(ModelSpec(str(tiny_weights_dir)))
    network = load_model(ModelSpec(str(tiny_weights_dir)), tokenizer).eval()
    for i in (2, 4):  # each answer is the greedy answer to everything before it: the first turn was in the prompt
        assert messages[i]["content"] == _greedy(network, tokenizer, messages[:i])
    assert after_reset[2]["content"] == _greedy(network, tokenizer, after_reset[:2]) != messages[4]["content"]
    assert messages[2]["content"] in first and messages[4]["content"] in second  # streamed to the terminal


@pytest.mark.parametrize(
    ("name", "model", "message"),
    [
        ("notes.txt", "notes.txt", "is a file but not a model; give a model directory (config.json), a Hub id, a"),
        ("", "", "holds no model (no config.json, lightft.json or .gguf file); give a model directory"),
        ("adapter_config.json", "", "is a peft adapter; give its base model as --model and --adapter"),
    ],
)
def test_a_model_path_without_a_model_is_one_line(tmp_path, capsys, name, model, message):
    if name:
        (tmp_path / name).write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        main(["chat", "--model", str(tmp_path / model)])
    assert exit_info.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("lightft: error: --model: ") and message in line


def test_a_tokenizer_without_chat_template_is_one_line_and_chatml_fixes_it(tmp_path, tiny_weights_dir, capsys,
                                                                            monkeypatch):  # fmt: skip
    plain = shutil.copytree(tiny_weights_dir, tmp_path / "plain")
    (plain / "chat_template.jinja").unlink()
    with pytest.raises(SystemExit):
        main(["chat", "--model", str(plain)])
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the weights' loading bar
    assert re.match(r"lightft: error: --model: .* no chat template.*--chat_template chatml\.$", last)
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n/exit\nnot read\n"))
    main(["chat", "--model", str(plain), "--chat_template", "chatml", "--max_new_tokens", "4"])
    assert capsys.readouterr().out.count("you> ") == 2


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["chat", "--help"])
    shown = capsys.readouterr().out
    for name in inspect.signature(chat).parameters:
        assert f"--{name}" in shown and re.search(rf"^ {{8}}{name}: \S", chat.__doc__, re.M), name
