"""The ``gpt2`` command: verbs, help, and each verb run as a user runs it."""

import argparse
import gc
import importlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from gpt2_lightning.apps.cli import VERBS, main, verb_parser
from tests.conftest import REPO_ROOT, run_train_py


def gpt2(*args: str, cwd=REPO_ROOT, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpt2_lightning", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def test_help_lists_every_verb():
    result = gpt2("--help")
    assert result.returncode == 0
    listed = re.findall(r"^    (\w+) ", result.stdout, re.M)
    assert listed == ["train", "chat", "respond", "eval", "plot", "report", "serve", "export", "compare", "prefs"]


def test_train_help_is_hydras_with_the_verbs_own_words():
    result = gpt2("train", "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("gpt2 train [group=option ...] [key=value ...] (the same as python train.py)")
    assert "model: gpt2-large, gpt2-medium, gpt2-small, gpt2-xl, mini, tiny" in result.stdout


@pytest.mark.parametrize("verb", [v for v in VERBS if v != "train"])
def test_every_option_of_every_verb_is_documented(verb):
    parser = verb_parser(verb, importlib.import_module(f"gpt2_lightning.apps.{VERBS[verb][0]}"))
    assert parser.description
    undocumented = [a.dest for a in parser._actions if not isinstance(a, argparse._HelpAction) and not a.help]
    assert undocumented == []


def test_unknown_verb_and_no_verb_exit_2_with_usage():
    for args in (["fly"], []):
        result = gpt2(*args)
        assert result.returncode == 2
        assert result.stderr.startswith("usage: gpt2 ") and "Traceback" not in result.stderr


def test_verb_user_errors_are_one_line_and_exit_2(tmp_path):
    result = gpt2("plot", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'tensorboard'}: no train_loss scalars to plot"


def test_train_composes_exactly_what_train_py_composes(tmp_path):
    overrides = ["model=tiny", "data=sample", "optimizer.lr=1e-3", "--cfg", "job"]
    by_verb = gpt2("train", *overrides, cwd=tmp_path)
    by_script = run_train_py(*overrides, cwd=tmp_path)
    assert by_verb.returncode == by_script.returncode == 0, by_verb.stderr + by_script.stderr
    assert "lr: 0.001" in by_verb.stdout and by_verb.stdout == by_script.stdout


def test_main_returns_the_verbs_exit_code(tiny_export, tmp_path, capsys):
    records = tmp_path / "mine.txt"
    records.write_text("Name a color.\n")
    assert main(["respond", str(tiny_export), "--records", str(records), "--max-new-tokens", "2"]) == 0
    assert "1 responses in" in capsys.readouterr().out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_health_and_chat_from_another_directory(tiny_export, tmp_path):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "gpt2_lightning", "serve", str(tiny_export), "--port", str(port),
                               "--name", "tiny", "--log-level", "warning"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                    health = json.load(response)
                break
            except OSError:
                assert server.poll() is None, server.communicate()[1]
                time.sleep(0.5)
        assert health["status"] == "ok" and health["model"] == "tiny"
        body = json.dumps({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}).encode()
        request = urllib.request.Request(f"{url}/v1/chat/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.load(response)
        assert answer["model"] == "tiny" and answer["usage"]["completion_tokens"] <= 3
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_serve_on_every_interface_without_a_key_warns_and_with_one_needs_it(tiny_export, tmp_path):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "gpt2_lightning", "serve", str(tiny_export), "--host", "0.0.0.0",
                               "--port", str(port), "--log-level", "warning"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    timer = threading.Timer(60, server.terminate)  # a server that never warns ends the reading
    timer.start()
    try:
        lines = iter(server.stderr.readline, "")  # the warning comes before it serves
        assert any("warning: serving on 0.0.0.0 without an API key" in line for line in lines)
    finally:
        timer.cancel()
        server.terminate()
        server.wait(timeout=30)
    port = free_port()
    keyed = subprocess.Popen([sys.executable, "-m", "gpt2_lightning", "serve", str(tiny_export), "--port", str(port),
                              "--log-level", "warning"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env={**os.environ, "GPT2_LIGHTNING_API_KEY": "secret"})
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=5).close()
                break
            except OSError:
                assert keyed.poll() is None, keyed.communicate()[1]
                time.sleep(0.5)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}/v1/models", timeout=10)
        assert refused.value.code == 401
        request = urllib.request.Request(f"{url}/v1/models", headers={"Authorization": "Bearer secret"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.load(response)["data"][0]["object"] == "model"
    finally:
        keyed.terminate()
        keyed.wait(timeout=30)


def test_only_user_errors_become_one_line(capsys):
    from gpt2_lightning.apps.common import exit_on_user_error
    from gpt2_lightning.errors import ConfigError

    for user_error, line in [(ConfigError("optimizer.lr must be positive, got 0"),
                              "error: optimizer.lr must be positive, got 0"),
                             (FileNotFoundError(2, "No such file or directory", "my.json"),
                              "error: my.json: No such file or directory"),
                             (OSError(28, "No space left on device", "out.json"),
                              "error: out.json: No space left on device")]:
        with pytest.raises(SystemExit) as exit_info, exit_on_user_error():
            raise user_error
        assert exit_info.value.code == 2 and capsys.readouterr().err.strip() == line
    for bug in (ValueError("not enough values to unpack"), OSError(9, "Bad file descriptor"), KeyError("x")):
        with pytest.raises(type(bug)), exit_on_user_error():
            raise bug


def test_the_collector_is_paused_inside_and_back_on_after_an_error_unless_the_caller_had_it_off():
    from gpt2_lightning.apps.common import collector_paused

    with pytest.raises(RuntimeError), collector_paused():
        assert not gc.isenabled()
        raise RuntimeError("an import that fails")
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_verb_loads_torch_with_no_garbage_collection_pass(tmp_path):
    """Without the pause, importing the verb (torch with it) ran 414 collection passes, 3 of them full."""
    script = tmp_path / "count_passes.py"
    script.write_text(
        "import gc, sys\n"
        "from gpt2_lightning.apps.cli import main\n"
        "passes = []\n"
        "gc.callbacks.append(lambda phase, info: phase == 'start' and passes.append(info['generation']))\n"
        "try:\n"
        "    main(['respond', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(len(passes), 'torch' in sys.modules, gc.isenabled(), file=sys.stderr)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    passes, torch_loaded, enabled = done.stderr.split()[-3:]
    assert torch_loaded == "True" and enabled == "True"
    assert int(passes) < 20  # the help text's own passes, after the import


# A program that leaves a reference cycle with a finaliser: only a collection at exit runs it.
CYCLE_AT_EXIT = (
    "import atexit, gc, sys, threading, time\n"
    "from gpt2_lightning.apps.common import exit_without_teardown\n"
    "class Cycle:\n"
    "    def __del__(self):\n"
    "        sys.stderr.write('collected at teardown\\n')\n"
    "gc.disable()\n"
    "cycle = Cycle(); cycle.me = cycle; del cycle\n"
    "atexit.register(lambda: print('exit handler ran'))\n"
    "threading.Thread(target=lambda: (time.sleep(0.3), print('thread finished'))).start()\n"
    "sys.stdout.write('written, not flushed; ')\n")


@pytest.mark.parametrize("ending, code, stderr", [
    ("exit_without_teardown(lambda: 3)", 3, ""),
    ("exit_without_teardown(lambda: sys.exit(4))", 4, ""),
    ("exit_without_teardown(lambda: sys.exit('a message'))", 1, "a message\n"),
])
def test_a_program_ends_with_its_code_after_its_threads_and_exit_handlers_but_without_teardown(ending, code, stderr):
    done = subprocess.run([sys.executable, "-c", CYCLE_AT_EXIT + ending], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (code, stderr)
    assert done.stdout == "written, not flushed; thread finished\nexit handler ran\n"


def test_without_exit_without_teardown_the_teardown_collects():
    """The control of the test above: Python's own exit runs the finaliser."""
    done = subprocess.run([sys.executable, "-c", CYCLE_AT_EXIT + "sys.exit(3)"], capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stderr) == (3, "collected at teardown\n")


def test_an_exception_in_a_program_is_left_to_python():
    done = subprocess.run([sys.executable, "-c", CYCLE_AT_EXIT + "exit_without_teardown(lambda: 1 / 0)"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "ZeroDivisionError" in done.stderr and done.stderr.endswith("collected at teardown\n")


def test_a_model_setting_that_cannot_work_is_one_line(tmp_path):
    result = gpt2("train", "model=tiny", "data=sample", "trainer=cpu", "model.config.n_heads=3",
                  f"hydra.run.dir={tmp_path}", timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: GPTConfig.n_heads=3 must divide emb_dim=64 (each head gets emb_dim / n_heads channels)")


@pytest.mark.slow
def test_respond_answers_a_runs_test_split_from_another_directory(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "mine.json").write_text((REPO_ROOT / "data" / "sample.json").read_text())
    trained = gpt2("train", "model=tiny", "data=sample", "data.path=mine.json", "trainer=cpu", "trainer.max_steps=1",
                   "respond=false", "plot=false", "test=false", "callbacks.progress_bar.refresh_rate=0",
                   "hydra.run.dir=run", cwd=tmp_path / "a", timeout=300)
    assert trained.returncode == 0, trained.stderr[-2000:]
    run = tmp_path / "a" / "run"
    (tmp_path / "b").mkdir()
    answered = gpt2("respond", str(run), "--max-new-tokens", "2", cwd=tmp_path / "b")
    assert answered.returncode == 0, answered.stderr[-2000:]
    responses = json.loads((run / "responses.json").read_text())
    assert [r["instruction"] for r in responses] == [r["instruction"] for r in json.loads(
        (run / "test-split.json").read_text())] and len(responses) == 6


@pytest.mark.slow
def test_a_served_run_is_named_by_its_experiment_and_model(tmp_path):
    from gpt2_lightning.apps.serve import served_name

    trained = gpt2("train", "experiment=quickstart", "model=tiny", "trainer.max_steps=1", "respond=false", "plot=false",
                   "test=false", "callbacks.progress_bar.refresh_rate=0", "hydra.run.dir=run", cwd=tmp_path, timeout=300)
    assert trained.returncode == 0, trained.stderr[-2000:]
    run = tmp_path / "run"
    names = {served_name(str(p)) for p in (run, run / "export", run / "checkpoints" / "last.ckpt")}
    assert names == {"quickstart-tiny"}
    assert served_name("gpt2-medium") == "gpt2-medium"
