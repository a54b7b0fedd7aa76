import json
import os
import pty
import subprocess
import sys
import time

from gpt2_lightning.apps.chat import ChatSession, ChatSettings
from gpt2_lightning.data.prompts import get_style
from gpt2_lightning.devices import for_inference
from gpt2_lightning.export.load import load_model
from gpt2_lightning.generation.respond import GenerationSettings, answer_batch


def chat(*args, stdin=""):
    return subprocess.run([sys.executable, "-m", "gpt2_lightning", "chat", *args], input=stdin,
                          capture_output=True, text=True, timeout=120)


def expected_answer(export, message, max_tokens):
    model, _ = load_model(export)
    model = for_inference(model, "cpu")  # as the chat command does
    return answer_batch(model, [{"instruction": message}], "alpaca",
                        GenerationSettings(max_new_tokens=max_tokens))[0]


def test_one_shot_prompt_prints_the_greedy_answer(tiny_export):
    result = chat(str(tiny_export), "--prompt", "Name a color.", "--temperature", "0", "--max-tokens", "12")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected_answer(tiny_export, "Name a color.", 12)


def test_driven_through_stdin_prompt_command_save_quit(tiny_export, tmp_path):
    saved = tmp_path / "conversation.json"
    script = "\n".join(["/set temperature 0", "/set max_tokens 9", "/set top_p 2", "Name a color.",
                        "/history", f"/save {saved}", "/quit", "never read"]) + "\n"
    result = chat(str(tiny_export), stdin=script)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    answer = expected_answer(tiny_export, "Name a color.", 9)
    assert lines[:3] == ["temperature=0.0", "max_tokens=9", "error: top_p=2 is out of range"]
    assert lines[3] == answer
    conversation = json.loads(saved.read_text())
    assert conversation["turns"] == [{"user": "Name a color.", "assistant": answer.strip()}]
    assert conversation["settings"]["temperature"] == 0.0


def test_session_history_new_and_retry_with_a_seed(tiny_export):
    model, _ = load_model(tiny_export)
    session = ChatSession(model, get_style("phi3"), ChatSettings(temperature=1.0, max_tokens=8, seed=5))
    first = "".join(session.stream("Hi"))
    again = "".join(ChatSession(model, get_style("phi3"), ChatSettings(1.0, 50, None, 8, 5)).stream("Hi"))
    assert first == again  # seeded sampling is reproducible
    "".join(session.stream("And then?"))
    assert [q for q, _ in session.history] == ["Hi", "And then?"]
    assert session.prompt_ids("x") != ChatSession(model, get_style("phi3")).prompt_ids("x")  # history in prompt


def test_interactive_terminal_session(tiny_export):
    """A real pseudo-terminal: banner, prompt, answer, quit."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(sys.executable, [sys.executable, "-m", "gpt2_lightning", "chat", str(tiny_export),
                                  "--temperature", "0", "--max-tokens", "6"])
    output = b""

    def read_until(marker: bytes, timeout: float = 90) -> None:
        nonlocal output
        deadline = time.time() + timeout
        while marker not in output and time.time() < deadline:
            output += os.read(fd, 4096)

    read_until(b">>> ")
    assert b"/help for commands" in output
    os.write(fd, b"/settings\n")
    read_until(b"max_tokens=6")
    os.write(fd, b"/quit\n")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
