import json
import os
import pty
import select
import signal
import subprocess
import sys
import time

import pytest

from gpt2_lightning.apps.chat import CHAT_DEFAULTS, ChatSession, with_setting
from gpt2_lightning.data.prompts import get_style
from gpt2_lightning.export.load import load_model
from gpt2_lightning.generation.placement import placed_for_generation
from gpt2_lightning.generation.respond import answer_batch
from gpt2_lightning.generation.sampling import SamplingParams
from gpt2_lightning.model.tokenizer import decode
from tests.http_server import Faults, FileServer


def chat(*args, stdin=""):
    return subprocess.run([sys.executable, "-m", "gpt2_lightning", "chat", *args], input=stdin,
                          capture_output=True, text=True, timeout=120)


def expected_answer(export, message, max_tokens):
    model, _ = load_model(export)
    model = placed_for_generation(model, device="cpu")  # as the chat command does
    return answer_batch(model, [{"instruction": message}], "alpaca",
                        SamplingParams(max_new_tokens=max_tokens))[0]


def test_one_shot_prompt_prints_the_greedy_answer(tiny_export):
    result = chat(str(tiny_export), "--prompt", "Name a color.", "--temperature", "0", "--max-new-tokens", "12")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected_answer(tiny_export, "Name a color.", 12)


def test_driven_through_stdin_prompt_command_save_quit(tiny_export, tmp_path):
    saved = tmp_path / "conversation.json"
    script = "\n".join(["/set temperature 0", "/set max_new_tokens 9", "/set top_p 2", "Name a color.",
                        "/history", f"/save {saved}", "/quit", "never read"]) + "\n"
    result = chat(str(tiny_export), stdin=script)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    answer = expected_answer(tiny_export, "Name a color.", 9)
    assert lines[:3] == ["temperature=0.0", "max_new_tokens=9", "error: top_p=2 is out of range"]
    assert lines[3] == answer
    conversation = json.loads(saved.read_text())
    assert conversation["turns"] == [{"user": "Name a color.", "assistant": answer.strip()}]
    assert conversation["settings"]["temperature"] == 0.0


def test_session_history_new_and_retry_with_a_seed(tiny_export):
    model, _ = load_model(tiny_export)
    session = ChatSession(model, get_style("phi3"), SamplingParams(max_new_tokens=8, temperature=1.0, top_k=50, seed=5))
    first = "".join(session.stream("Hi"))
    again = "".join(ChatSession(model, get_style("phi3"), SamplingParams(8, 1.0, 50, None, 5)).stream("Hi"))
    assert first == again  # seeded sampling is reproducible
    "".join(session.stream("And then?"))
    assert [q for q, _ in session.history] == ["Hi", "And then?"]
    assert session.prompt_ids("x") != ChatSession(model, get_style("phi3")).prompt_ids("x")  # history in prompt


class TerminalChat:
    """``gpt2 chat`` in a real pseudo-terminal."""

    def __init__(self, export, home):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            default_sigint()
            os.environ["GPT2_LIGHTNING_CACHE"] = str(home)  # the input history goes there
            os.execv(sys.executable, [sys.executable, "-m", "gpt2_lightning", "chat", str(export),
                                      "--temperature", "0", "--max-new-tokens", "6"])
        self.output = b""

    def read_until(self, marker: bytes, timeout: float = 90) -> bytes:
        deadline = time.time() + timeout
        while marker not in self.output and time.time() < deadline:
            if not select.select([self.fd], [], [], max(0.0, deadline - time.time()))[0]:
                break  # nothing more within the timeout
            try:
                self.output += os.read(self.fd, 65536)
            except OSError:  # the program ended
                break
        assert marker in self.output, self.output[-2000:]
        before, _, self.output = self.output.partition(marker)
        return before

    def send(self, text: str) -> None:
        data = text.encode()
        for start in range(0, len(data), 1024):  # a terminal takes typing in pieces
            os.write(self.fd, data[start:start + 1024])
            time.sleep(0.01)

    def exit_code(self) -> int:
        return os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])


def test_interactive_terminal_session(tiny_export, tmp_path):
    """A real pseudo-terminal: banner, prompt, commands, quit."""
    chat = TerminalChat(tiny_export, tmp_path)
    assert b"/help for commands" in chat.read_until(b">>> ")
    chat.send("/settings\n")
    chat.read_until(b"max_new_tokens=6")
    chat.send("/quit\n")
    assert chat.exit_code() == 0


def test_terminal_edits_recalls_and_takes_long_lines_and_odd_commands(tiny_export, tmp_path):
    chat = TerminalChat(tiny_export, tmp_path)
    chat.read_until(b">>> ")
    chat.send("/retry\n")
    chat.read_until(b"nothing to retry yet")
    chat.send("/\n")
    chat.read_until(b"unknown command /; /help lists them")
    chat.send("/new\n")
    chat.read_until(b"new conversation")
    chat.send("/retry\n")  # after /new there is nothing to answer again
    chat.read_until(b"nothing to retry yet")
    long_message = "word " * 1200  # 6000 characters: more than a terminal's line buffer
    chat.send(long_message + "\n")
    chat.read_until(b">>> ")
    chat.send("/history\n")
    history = chat.read_until(b"model: ")
    assert long_message.strip().encode() in history.replace(b"\r\n", b"").replace(b"\r", b"")
    chat.send("/settings\n")
    chat.read_until(b"max_new_tokens=6")
    chat.send("\x1b[A\n")  # the up arrow brings /settings back
    chat.read_until(b"max_new_tokens=6")
    chat.send(f"/save {tmp_path / 'missing' / 'chat.json'}\n")
    chat.read_until(b"error: no folder")
    assert not (tmp_path / "missing").exists()
    chat.send("/quit\n")
    assert chat.exit_code() == 0
    assert "/settings" in (tmp_path / "chat_history").read_text()


def default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as a terminal gives it, even where pytest runs with it ignored


def test_ctrl_c_while_the_model_loads_leaves_quietly(tiny_export, tmp_path):
    # The weights come from a server that serves them slowly: the child is loading for as long as
    # the download runs, and its request says when it has begun.
    faults = Faults(seconds_per_mib=30.0)
    with FileServer({"/model.safetensors": (tiny_export / "model.safetensors").read_bytes()}, faults) as server:
        process = subprocess.Popen([sys.executable, "-m", "gpt2_lightning", "chat", f"{server.url}/model.safetensors",
                                    "--prompt", "Hi"], env={**os.environ, "GPT2_LIGHTNING_CACHE": str(tmp_path)},
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
        deadline = time.time() + 120
        while not faults.requests and time.time() < deadline and process.poll() is None:
            time.sleep(0.05)
        assert faults.requests, process.communicate()[1][-2000:]
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr


def test_ctrl_c_during_a_one_shot_answer_exits_130(tmp_path):
    import torch

    from gpt2_lightning.export.folder import export_model
    from gpt2_lightning.model.gpt import GPTConfig, GPTModel

    torch.manual_seed(0)  # wide enough that 1000 tokens take seconds
    export = export_model(GPTModel(GPTConfig(context_length=1024, emb_dim=128, n_layers=4, n_heads=4)),
                          tmp_path / "export", "alpaca")
    process = subprocess.Popen([sys.executable, "-m", "gpt2_lightning", "chat", str(export), "--prompt", "Hi",
                                "--max-new-tokens", "1000", "--temperature", "1", "--seed", "1", "--dtype", "float32"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=default_sigint)
    assert select.select([process.stdout], [], [], 120)[0] and process.stdout.read(1)  # the answer is streaming
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and b"Traceback" not in stderr, stderr[-2000:]


def test_a_system_message_opens_every_prompt_in_the_styles_format(tiny_export):
    model, _ = load_model(tiny_export)
    session = ChatSession(model, get_style("chatml"), system="Answer in French.")
    assert decode(session.prompt_ids("Hi")) == get_style("chatml").conversation([], "Hi", system="Answer in French.")
    assert decode(session.prompt_ids("Hi")).startswith("<|im_start|>system\nAnswer in French.<|im_end|>\n")


def test_set_takes_the_penalties_and_refuses_them_out_of_range():
    params = with_setting(with_setting(CHAT_DEFAULTS, "repetition_penalty", "1.3"), "min_new_tokens", "4")
    assert (params.repetition_penalty, params.min_new_tokens, params.temperature) == (1.3, 4, 0.7)
    with pytest.raises(ValueError, match="presence_penalty=5 is out of range"):
        with_setting(params, "presence_penalty", "5")
