"""Talk to a model in the terminal.

MODEL is a run directory, an export folder, a .ckpt file, or GPT-2 weights. Answers
stream as they are generated; Ctrl-C stops an answer, not the program; /help lists the
commands. --prompt TEXT (or --prompt - to read standard input) answers once.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gpt2_lightning.apps.inference import (
    add_model_arguments,
    add_sampling_arguments,
    model_for_generation,
    sampling_params,
)
from gpt2_lightning.data.prompts import PromptStyle
from gpt2_lightning.generation.engine import BatchEngine
from gpt2_lightning.generation.sampling import SamplingParams
from gpt2_lightning.generation.stream import TextStream, stream_answer
from gpt2_lightning.io import write_json
from gpt2_lightning.model.gpt import GPTModel
from gpt2_lightning.model.tokenizer import encode
from gpt2_lightning.resources import cache_dir

HELP = """commands:
  /new                 start a new conversation (forget the history)
  /history             show the conversation so far
  /retry               answer the last message again
  /set NAME VALUE      temperature, top_k, top_p, max_new_tokens, seed, presence_penalty,
                       frequency_penalty, repetition_penalty or min_new_tokens (top_k/top_p/seed: 'off')
  /settings            show the generation settings
  /save FILE           save the conversation as JSON
  /help                this list
  /quit                leave (also Ctrl-D)"""


CHAT_DEFAULTS = SamplingParams(max_new_tokens=200, temperature=0.7, top_k=50)
SETTABLE = ("temperature", "top_k", "top_p", "max_new_tokens", "seed", "presence_penalty", "frequency_penalty",
            "repetition_penalty", "min_new_tokens")
FRACTIONAL = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "repetition_penalty")


def with_setting(params: SamplingParams, name: str, value: str) -> SamplingParams:
    """``params`` with one setting changed from its text form; a ``ValueError`` says what is allowed."""
    if name not in SETTABLE:
        raise ValueError(f"unknown setting {name!r}; use {', '.join(SETTABLE)}")
    if value.lower() in ("off", "none") and name in ("top_k", "top_p", "seed"):
        return params.with_(**{name: None})
    try:
        number = float(value) if name in FRACTIONAL else int(value)
    except ValueError:
        raise ValueError(f"{name} needs a number, got {value!r}") from None
    try:
        return params.with_(**{name: number})
    except ValueError:
        raise ValueError(f"{name}={value} is out of range") from None


@dataclass
class ChatSession:
    """A conversation with one model: history, settings, streaming answers."""

    model: GPTModel
    style: PromptStyle
    params: SamplingParams = CHAT_DEFAULTS
    history: list[tuple[str, str]] = field(default_factory=list)
    system: str | None = None
    """A system message that opens every prompt, in the style's system format."""

    def __post_init__(self) -> None:
        self.engine = BatchEngine(self.model, max_batch_size=1, max_queue=1)

    def prompt_ids(self, message: str) -> list[int]:
        """The prompt of ``message`` with as much history as fits beside the answer."""
        room = self.model.cfg.context_length - min(self.params.max_new_tokens, self.model.cfg.context_length // 2)
        for start in range(len(self.history) + 1):
            ids = encode(self.style.conversation(self.history[start:], message, self.system))
            if len(ids) <= room:
                return ids
        return ids[-room:]

    def stream(self, message: str) -> Iterator[str]:
        """Yield the answer to ``message`` in pieces as tokens arrive; the history records
        the answer when the stream ends or is stopped (Ctrl-C)."""
        generator = self.params.generator(next(self.model.parameters()).device)
        answer = TextStream(self.prompt_ids(message), [*self.style.stop_strings, *self.params.stop])
        try:
            yield from stream_answer(self.engine, answer, self.params, generator)
        finally:
            self.history.append((message, answer.text.strip()))


def run_repl(session: ChatSession, stdin, stdout) -> int:
    """The interactive loop; returns the exit code."""
    read = terminal_reader() if stdin.isatty() and stdin is sys.stdin else None
    while True:
        try:
            line = read() if read else stdin.readline()
        except KeyboardInterrupt:
            stdout.write("\n(use /quit to leave)\n")
            continue
        except EOFError:  # Ctrl-D
            line = ""
        if not line:
            return 0
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            command, *args = line[1:].split(maxsplit=2) or [""]
            if command in ("quit", "exit", "q"):
                return 0
            if command != "retry":
                stdout.write(run_command(session, command, args) + "\n")
                stdout.flush()
                continue
            if not session.history:
                stdout.write("nothing to retry yet\n")
                continue
            line, _ = session.history.pop()
        try:
            for piece in session.stream(line):
                stdout.write(piece)
                stdout.flush()
        except KeyboardInterrupt:
            stdout.write(" [stopped]")
        stdout.write("\n")
        stdout.flush()


def terminal_reader():
    """``input`` with line editing, arrow keys and history (GNU readline where Python has it),
    and no limit on the length of a line; the history is kept in the user cache."""
    with contextlib.suppress(ImportError):  # no readline on Windows: plain input()
        import readline

        history = cache_dir() / "chat_history"
        with contextlib.suppress(OSError):
            readline.read_history_file(history)

        def save_history() -> None:
            with contextlib.suppress(OSError):
                history.parent.mkdir(parents=True, exist_ok=True)
                readline.set_history_length(1000)
                readline.write_history_file(history)

        atexit.register(save_history)

    def read() -> str:
        print()
        return input(">>> ") + "\n"

    return read


def run_command(session: ChatSession, command: str, args: list[str]) -> str:
    """Carry out a slash command other than /quit and /retry; return what to print."""
    if command == "help":
        return HELP
    if command == "new":
        session.history.clear()
        return "new conversation"
    if command == "history":
        return "\n".join(f"you: {q}\nmodel: {a}" for q, a in session.history) or "(empty)"
    if command == "settings":
        return ", ".join(f"{name}={getattr(session.params, name)}" for name in SETTABLE)
    if command == "set":
        if len(args) != 2:
            return "usage: /set NAME VALUE"
        try:
            session.params = with_setting(session.params, args[0], args[1])
        except ValueError as err:
            return f"error: {err}"
        return f"{args[0]}={getattr(session.params, args[0])}"
    if command == "save":
        if not args:
            return "usage: /save FILE"
        path = Path(" ".join(args)).expanduser()
        if not path.parent.is_dir():
            return f"error: no folder {path.parent} to save into; create it first or give another path"
        try:
            settings = {name: getattr(session.params, name) for name in SETTABLE}
            write_json(path, {"prompt_style": session.style.name, "settings": settings,
                              "turns": [{"user": q, "assistant": a} for q, a in session.history]})
        except OSError as err:
            return f"error: cannot write {path}: {err.strerror}"
        return f"saved {len(session.history)} turns to {path}"
    return f"unknown command /{command}; /help lists them"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = HELP
    add_model_arguments(parser)
    parser.add_argument("--prompt", help="answer this once and exit ('-': read it from standard input)")
    parser.add_argument("--system", help="a system message that opens the conversation (in the prompt style's "
                        "system format)")
    add_sampling_arguments(parser, CHAT_DEFAULTS)


def run(args: argparse.Namespace) -> int:
    model, style = model_for_generation(args)
    session = ChatSession(model, style, sampling_params(args), system=args.system)
    try:
        if args.prompt is not None:
            message = sys.stdin.read() if args.prompt == "-" else args.prompt
            for piece in session.stream(message.strip()):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            return 0
        if sys.stdin.isatty():
            print(f"gpt2 chat: {args.model} ({model.num_parameters() / 1e6:.0f}M parameters, "
                  f"{session.style.name} prompts). /help for commands, /quit to leave.")
        return run_repl(session, sys.stdin, sys.stdout)
    finally:  # also on Ctrl-C (exit 130): the engine's thread must not be mid-step when the process exits
        session.engine.close()
