import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gpt2_lightning.apps.cli import main
from gpt2_lightning.errors import JudgeError
from gpt2_lightning.evaluate.judge import Judge, judge_prompt, parse_score
from gpt2_lightning.evaluate.scores import exact_match, rouge_l, score_responses


def test_rouge_l_and_exact_match():
    assert rouge_l("The capital is Paris.", "the capital is paris") == 1.0
    # LCS "the cat the mat" = 4 words; precision 4/6, recall 4/6.
    assert rouge_l("the cat sat on the mat", "the cat lay near the mat") == pytest.approx(4 / 6)
    assert rouge_l("", "") == 1.0 and rouge_l("x", "") == 0.0 and rouge_l("a b", "c d") == 0.0
    assert exact_match(" Red. ", "red") and not exact_match("red blue", "red")
    scores = score_responses([{"output": "Red.", "model_response": "red"},
                              {"output": "Blue sky", "model_response": ""}])
    assert scores == {"n": 2, "exact_match": 0.5, "rouge_l": 0.5, "empty_responses": 1}


class FakeJudge:
    """A real HTTP server on 127.0.0.1 speaking Ollama's or OpenAI's chat API."""

    def __init__(self, reply: str):
        self.prompts = []
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                judge.prompts.append((self.path, body))
                content = reply
                data = ({"message": {"role": "assistant", "content": content}} if self.path == "/api/chat"
                        else {"choices": [{"message": {"role": "assistant", "content": content}}]})
                payload = json.dumps(data).encode()
                self.send_response(200 if self.path in ("/api/chat", "/v1/chat/completions") else 404)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


RECORD = {"instruction": "Name a color.", "input": "", "output": "Red.", "model_response": "Blue."}


@pytest.mark.parametrize("suffix, path", [("", "/api/chat"), ("/v1", "/v1/chat/completions")])
def test_judge_scores_through_ollama_and_openai_apis(suffix, path):
    server = FakeJudge("Score: 85")
    try:
        assert Judge(server.url + suffix, "llama3").score([RECORD, RECORD]) == [85, 85]
    finally:
        server.close()
    sent_path, body = server.prompts[0]
    assert sent_path == path and body["model"] == "llama3"
    assert body["messages"][0]["content"] == judge_prompt(RECORD)
    assert "score the model response `Blue.`" in judge_prompt(RECORD)


def test_unreachable_judge_is_a_clear_error():
    with pytest.raises(JudgeError, match=r"no LLM judge answers at http://127.0.0.1:9/api/chat"):
        Judge("http://127.0.0.1:9").ask("hi")
    assert parse_score("I'd say 250") == 100 and parse_score("no idea") is None


def test_eval_command_keeps_training_metrics_and_adds_judge(tmp_path, capsys):
    responses = tmp_path / "responses.json"
    responses.write_text(json.dumps([RECORD]))
    (tmp_path / "eval.json").write_text(json.dumps({"test_loss": 1.5}))
    server = FakeJudge("70")
    try:
        main(["eval", str(responses), "--judge-url", server.url])
    finally:
        server.close()
    scores = json.loads((tmp_path / "eval.json").read_text())
    assert scores["test_loss"] == 1.5 and scores["n"] == 1 and scores["judge"]["scores"] == [70]
    assert "mean score: 70" in capsys.readouterr().out


def test_eval_of_a_run_directory_scores_its_responses_into_its_eval_json(tmp_path, capsys):
    (tmp_path / "responses.json").write_text(json.dumps([RECORD]))
    main(["eval", str(tmp_path)])
    assert json.loads((tmp_path / "eval.json").read_text())["n"] == 1
    capsys.readouterr()
    (tmp_path / "unanswered").mkdir()  # a run that has no answers yet
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(tmp_path / "unanswered")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'unanswered' / 'responses.json'}: no such file"


def test_eval_keeps_a_judge_score_only_for_the_responses_it_judged(tmp_path):
    responses = tmp_path / "responses.json"
    responses.write_text(json.dumps([RECORD]))
    server = FakeJudge("70")
    try:
        main(["eval", str(responses), "--judge-url", server.url])
    finally:
        server.close()
    main(["eval", str(responses)])  # the same responses: the judge's score still holds
    assert json.loads((tmp_path / "eval.json").read_text())["judge"]["mean"] == 70
    responses.write_text(json.dumps([{**RECORD, "model_response": "Green."}]))
    main(["eval", str(responses)])
    assert "judge" not in json.loads((tmp_path / "eval.json").read_text())


def test_a_corrupt_eval_json_is_one_clear_line(tmp_path, capsys):
    responses = tmp_path / "responses.json"
    responses.write_text(json.dumps([RECORD]))
    (tmp_path / "eval.json").write_text("{not json")
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(responses)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'eval.json'}: not a JSON file")


def test_the_loss_plots_token_axis_starts_at_step_0_and_its_labels_stay_apart():
    from gpt2_lightning.evaluate.plot import loss_figure

    scalars = {"train_loss": [(s, 5.0 - s / 10) for s in range(20)],
               "tokens_seen": [(s, 7_000 * (s + 1)) for s in range(20)]}
    figure = loss_figure(scalars)
    [top] = figure.axes[0].child_axes
    figure.axes[0].set_xlim(0, 25)  # beyond the logged steps: the token axis goes on in a straight line
    figure.canvas.draw()
    assert top.get_xlim() == pytest.approx((0, 175_000))
    labels = [t.get_text() for t in top.xaxis.get_ticklabels() if t.get_text()]
    assert labels and all(len(label) <= 5 for label in labels), labels  # "120k", not "120000140000"


def test_gpt2_plot_draws_a_runs_losses_without_loading_torch(tmp_path):
    """A verb that only reads a run's files starts without torch (1.0 s of imports)."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(tmp_path / "run" / "tensorboard") as writer:
        for step in range(5):
            writer.add_scalar("train_loss", 5.0 - step, step)
            writer.add_scalar("tokens_seen", 100.0 * (step + 1), step)
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('torch loaded:', 'torch' in sys.modules))\n"
            "from gpt2_lightning.apps.cli import command\n"
            "command()\n")
    done = subprocess.run([sys.executable, "-c", code, "plot", str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [str(tmp_path / "run" / "loss.png"), "torch loaded: False"]
    assert (tmp_path / "run" / "loss.png").read_bytes().startswith(b"\x89PNG")
