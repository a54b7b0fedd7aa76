"""The OpenAI-compatible server, started for real on 127.0.0.1."""

import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import torch
from openai import OpenAI

from gpt2_lightning.apps.serve import create_app
from gpt2_lightning.data.prompts import get_style
from gpt2_lightning.export.load import load_model
from gpt2_lightning.generation.respond import answer_batch
from gpt2_lightning.generation.sampling import SamplingParams
from gpt2_lightning.model.gpt import GPTConfig, GPTModel
from tests.browser import headless_chromium
from tests.serving import serving


@pytest.fixture(scope="module")
def server(tiny_export):
    model, meta = load_model(tiny_export)
    with serving(create_app(model, get_style(meta["prompt_style"]), name="tiny", default_max_tokens=16)) as url:
        yield url, model


def client(url):
    return OpenAI(base_url=f"{url}/v1", api_key="not-needed", max_retries=0)


def test_openai_client_chat_completion_equals_the_library_answer(server):
    url, model = server
    reply = client(url).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Name a color."}], max_tokens=10, temperature=0)
    expected = answer_batch(model, [{"instruction": "Name a color."}], "alpaca", SamplingParams(max_new_tokens=10))
    assert reply.choices[0].message.content == expected[0]
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens <= 10 and reply.usage.prompt_tokens > 20


def test_openai_client_streams_chat_and_completions(server):
    url, _ = server
    api = client(url)
    whole = api.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                        max_tokens=12, temperature=0).choices[0].message.content
    chunks = list(api.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                              max_tokens=12, temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    text = api.completions.create(model="tiny", prompt="The sky is", max_tokens=8, temperature=0)
    streamed = api.completions.create(model="tiny", prompt="The sky is", max_tokens=8, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == text.choices[0].text


def test_models_and_health(server):
    url, _ = server
    assert [m.id for m in client(url).models.list().data] == ["tiny"]
    assert requests.get(f"{url}/health").json()["status"] == "ok"


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "the request body is not valid JSON"),
    ({"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}, 404, "the model 'gpt-4' does not exist"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": -5}, 400, "max_tokens: Input should be greater"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": 3}, 400, "temperature: Input should be less"),
    ({"messages": [{"role": "user", "content": "x"}], "top_p": 0}, 400, "top_p: Input should be greater"),
    ({"messages": []}, 400, "messages: List should have at least 1 item"),
    ({"messages": [{"role": "assistant", "content": "x"}]}, 400, "an assistant turn must follow a user turn"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}, 400,
     "the conversation must end with a user turn"),
    ({"messages": [{"role": "user", "content": "word " * 400}]}, 400, "context is 256 tokens"),
])
def test_bad_requests_get_a_4xx_with_a_message_and_the_server_keeps_serving(server, body, status, message):
    url, _ = server
    kwargs = {"data": body, "headers": {"Content-Type": "application/json"}} if isinstance(body, bytes) \
        else {"json": body}
    response = requests.post(f"{url}/v1/chat/completions", timeout=30, **kwargs)
    assert response.status_code == status
    assert message in response.json()["error"]["message"]
    assert requests.get(f"{url}/health").ok


def test_twenty_concurrent_requests_are_all_answered_while_health_answers(server):
    url, _ = server

    def ask(i):
        return requests.post(f"{url}/v1/completions", json={"prompt": f"Count {i}", "max_tokens": 12,
                                                           "temperature": 0}, timeout=120)

    with ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(ask, i) for i in range(20)]
        time.sleep(0.05)
        start = time.perf_counter()
        health = requests.get(f"{url}/health", timeout=10)
        health_latency = time.perf_counter() - start
        answers = [f.result() for f in futures]
    assert all(a.status_code == 200 for a in answers)
    assert len({a.json()["id"] for a in answers}) == 20
    assert health.ok and health_latency < 2.0


def test_the_judge_can_score_through_this_server(server):
    from gpt2_lightning.evaluate.judge import Judge
    url, _ = server
    record = {"instruction": "Name a color.", "input": "", "output": "Red.", "model_response": "Blue."}
    text = Judge(f"{url}/v1", model="tiny").ask("Score this")
    assert isinstance(text, str)
    assert len(Judge(f"{url}/v1", model="tiny").score([record])) == 1


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromedriver") is None, reason="Debian's chromium-driver is not installed")
def test_the_web_page_streams_an_answer_in_headless_chromium(server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = server
    with headless_chromium() as driver:
        driver.get(url + "/")
        assert "tiny" in driver.find_element(By.ID, "model").text
        driver.find_element(By.ID, "temperature").clear()
        driver.find_element(By.ID, "temperature").send_keys("0")
        driver.find_element(By.ID, "input").send_keys("Name a color.\n")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-state='done']"))
        user = driver.find_element(By.CSS_SELECTOR, ".msg.user").text
        answer = driver.find_element(By.CSS_SELECTOR, ".msg.assistant").text
        assert user == "Name a color."
        expected = requests.post(f"{url}/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "Name a color."}], "temperature": 0}).json()
        assert answer == expected["choices"][0]["message"]["content"].strip()


@pytest.fixture
def one_row_server():
    """A server that decodes one request at a time and lets one more wait, with a model whose
    context holds answers long enough (seconds) to be interrupted."""
    torch.manual_seed(0)
    model = GPTModel(GPTConfig(vocab_size=50257, context_length=1024, emb_dim=256, n_layers=4, n_heads=4)).eval()
    with serving(create_app(model, get_style("alpaca"), name="tiny", max_batch_size=1, max_queue=1)) as url:
        yield url


def start_stream(url, max_tokens=1000):
    response = requests.post(f"{url}/v1/completions", json={"prompt": "Once upon a time", "max_tokens": max_tokens,
                                                           "temperature": 0, "stream": True}, stream=True, timeout=30)
    assert response.status_code == 200
    lines = response.iter_lines()
    assert next(line for line in lines if line).startswith(b"data: ")  # generating
    return response, lines  # dropping the line iterator would close the connection


def wait_for(url, condition, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        health = requests.get(f"{url}/health", timeout=5).json()
        if condition(health):
            return health
        time.sleep(0.05)
    raise AssertionError(f"never reached; last /health: {health}")


def test_a_full_queue_gets_429_with_retry_after_and_a_disconnect_frees_the_row(one_row_server):
    url = one_row_server
    first, _lines = start_stream(url)
    with ThreadPoolExecutor(1) as pool:
        queued = pool.submit(requests.post, f"{url}/v1/completions",
                             json={"prompt": "Hello", "max_tokens": 3, "temperature": 0}, timeout=60)
        wait_for(url, lambda h: h["running"] == 1 and h["waiting"] == 1)
        refused = requests.post(f"{url}/v1/completions", json={"prompt": "Hi", "max_tokens": 3}, timeout=10)
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
        assert "busy" in refused.json()["error"]["message"]
        left = time.monotonic()
        first.close()  # the client leaves: its generation ends, the queued request gets the row
        answered = queued.result()
        assert time.monotonic() - left < 3  # the first answer alone would take ~7 s more
    assert answered.status_code == 200 and answered.json()["usage"]["completion_tokens"] <= 3
    wait_for(url, lambda h: h["running"] == 0 and h["waiting"] == 0)


def test_metrics_are_prometheus_text_with_queue_batch_tokens_and_latency(server):
    url, _ = server
    before = requests.get(f"{url}/metrics", timeout=5)
    assert before.status_code == 200 and before.headers["content-type"].startswith("text/plain")
    requests.post(f"{url}/v1/completions", json={"prompt": "Hi", "max_tokens": 4, "temperature": 0}, timeout=30)
    text = requests.get(f"{url}/metrics", timeout=5).text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    for name in ("gpt2_queue_depth", "gpt2_batch_size", "gpt2_generated_tokens_total",
                 "gpt2_generated_tokens_per_second", "gpt2_prompt_tokens_computed_total",
                 "gpt2_prefix_cache_reused_tokens_total", "gpt2_request_duration_seconds_count"):
        assert f"# TYPE {name.removesuffix('_count')} " in text and name in samples
    assert samples["gpt2_prompt_tokens_computed_total"] >= 1
    assert samples["gpt2_generated_tokens_total"] >= 1 and samples['gpt2_requests_total{status="200"}'] >= 1
    assert samples['gpt2_request_duration_seconds_bucket{le="+Inf"}'] == samples["gpt2_request_duration_seconds_count"]
