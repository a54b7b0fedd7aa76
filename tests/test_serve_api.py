"""What OpenAI clients and evaluation harnesses send beyond the basics, against a real server on
127.0.0.1: log-probabilities, echo, token-id prompts, n, seeds, token routes, keys and limits."""

import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests
from openai import OpenAI

from gpt2_lightning.apps.serve import create_app
from gpt2_lightning.data.prompts import get_style
from gpt2_lightning.evaluate.likelihood import score_tokens
from gpt2_lightning.export.load import load_model
from gpt2_lightning.model.tokenizer import decode, encode
from tests.browser import headless_chromium
from tests.serving import serving

KEY = "sk-test-key"


@pytest.fixture(scope="module")
def server(tiny_export):
    model, meta = load_model(tiny_export)
    with serving(create_app(model, get_style(meta["prompt_style"]), name="tiny", default_max_tokens=16)) as url:
        yield url, model


@pytest.fixture(scope="module")
def keyed_server(tiny_export):
    model, meta = load_model(tiny_export)
    with serving(create_app(model, get_style(meta["prompt_style"]), name="tiny", api_key=KEY,
                            max_request_bytes=10_000)) as url:
        yield url


def client(url, key="none"):
    return OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def expected_scores(model, prompt_ids, answer_ids, top):
    """The model's own log-probabilities of ``answer_ids`` after ``prompt_ids``."""
    return score_tokens(model, [(prompt_ids + answer_ids, len(prompt_ids))], top=top)[0]


def test_chat_logprobs_are_the_models_own_for_each_answer_token(server):
    url, model = server
    messages = [{"role": "user", "content": "Name a color."}]
    reply = client(url).chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0,
                                                logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens == 8
    prompt_ids = requests.post(f"{url}/tokenize", json={"messages": messages}).json()["tokens"]
    answer_ids = [encode(bytes(entry.bytes).decode("utf-8", errors="replace"))[0] for entry in content]
    assert b"".join(bytes(entry.bytes) for entry in content).decode().lstrip() == reply.choices[0].message.content
    expected = expected_scores(model, prompt_ids, answer_ids, top=3)
    for entry, logprob, top in zip(content, expected.logprobs, expected.top):
        assert entry.logprob == pytest.approx(logprob, abs=1e-4)
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx([lp for _, lp in top], abs=1e-4)
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-6)  # greedy: the top token


def test_streamed_completion_logprobs_equal_the_whole_answers(server):
    url, _ = server
    api = client(url)
    whole = api.completions.create(model="tiny", prompt="The sky is", max_tokens=6, temperature=0, logprobs=2)
    chunks = list(api.completions.create(model="tiny", prompt="The sky is", max_tokens=6, temperature=0,
                                         logprobs=2, stream=True))
    logprobs = whole.choices[0].logprobs
    assert "".join(logprobs.tokens) == whole.choices[0].text
    assert [t for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.tokens] == logprobs.tokens
    assert [t for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.token_logprobs] == \
        pytest.approx(logprobs.token_logprobs, abs=1e-6)
    assert logprobs.text_offset == [len("".join(logprobs.tokens[:i])) for i in range(len(logprobs.tokens))]
    assert all(len(top) <= 2 for top in logprobs.top_logprobs)


def test_echo_scores_token_id_prompts_in_one_request_as_lm_eval_sends_them(server):
    url, model = server
    prompts = [encode("The capital of France is Paris"), encode("One two three four")]
    reply = requests.post(f"{url}/v1/completions", json={"prompt": prompts, "max_tokens": 0, "echo": True,
                                                         "logprobs": 1, "temperature": 0}).json()
    assert [c["index"] for c in reply["choices"]] == [0, 1]
    for ids, choice in zip(prompts, reply["choices"]):
        assert choice["text"] == decode(ids)
        logprobs = choice["logprobs"]
        assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
        expected = score_tokens(model, [(ids, 1)], top=1)[0]
        assert logprobs["token_logprobs"][1:] == pytest.approx(expected.logprobs, abs=1e-4)
        assert [list(top.values())[0] for top in logprobs["top_logprobs"][1:]] == \
            pytest.approx([t[0][1] for t in expected.top], abs=1e-4)
    assert reply["usage"] == {"prompt_tokens": sum(map(len, prompts)), "completion_tokens": 0,
                              "total_tokens": sum(map(len, prompts))}


def test_echo_with_an_answer_puts_the_prompt_before_it(server):
    url, _ = server
    reply = client(url).completions.create(model="tiny", prompt="Once upon", max_tokens=3, temperature=0,
                                           echo=True, logprobs=0)
    plain = client(url).completions.create(model="tiny", prompt="Once upon", max_tokens=3, temperature=0)
    choice = reply.choices[0]
    assert choice.text == "Once upon" + plain.choices[0].text
    assert len(choice.logprobs.tokens) == len(encode("Once upon")) + reply.usage.completion_tokens


def test_n_choices_are_reproducible_with_a_seed_and_equal_when_greedy(server):
    url, _ = server
    api = client(url)
    ask = dict(model="tiny", messages=[{"role": "user", "content": "Tell a story."}], max_tokens=10, n=3)
    first = api.chat.completions.create(**ask, temperature=1.0, seed=7)
    again = api.chat.completions.create(**ask, temperature=1.0, seed=7)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]
    assert len({c.message.content for c in first.choices}) > 1  # each choice its own stream
    greedy = api.chat.completions.create(**ask, temperature=0)
    assert len({c.message.content for c in greedy.choices}) == 1
    assert greedy.usage.completion_tokens == sum(len(encode(c.message.content)) for c in greedy.choices) or \
        greedy.usage.completion_tokens <= 30


def test_usage_comes_in_its_own_last_chunk_when_asked(server):
    url, _ = server
    chunks = list(client(url).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=5, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 5
    assert all(c.usage is None for c in chunks[:-1])


def test_tokenize_and_detokenize_in_vllms_shapes(server):
    url, _ = server
    tokens = requests.post(f"{url}/tokenize", json={"prompt": "Hello world"}).json()
    assert tokens == {"tokens": encode("Hello world"), "count": 2, "max_model_len": 256}
    assert requests.post(f"{url}/detokenize", json={"tokens": tokens["tokens"]}).json() == {"prompt": "Hello world"}


def test_what_clients_send_is_accepted_as_openai_accepts_it(server):
    url, _ = server
    api = client(url)
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""},
               {"role": "user", "content": [{"type": "text", "text": "Name "}, {"type": "text", "text": "a color."}]}]
    reply = api.chat.completions.create(model="tiny", messages=history, max_completion_tokens=3, temperature=0)
    assert reply.usage.completion_tokens <= 3
    parts = api.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Name a color."}],
                                        max_tokens=3, temperature=0)
    assert api.chat.completions.create(model="tiny", messages=history[2:], max_tokens=3,
                                       temperature=0).choices[0].message.content == parts.choices[0].message.content


@pytest.mark.parametrize("route, body, status, param, message", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "logit_bias": {"99999": 5}}, 400,
     "logit_bias", "below 50257"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                              "response_format": {"type": "json_schema"}}, 400, "response_format", "needs its json_schema"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}}, 400, "response_format",
     "the JSON schema cannot be used"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "tools": []}, 400, "tools",
     "does not implement"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "1"}]},
     400, "messages", "tool"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, 400,
     "top_logprobs", "needs logprobs"),
    ("/v1/completions", {"prompt": ""}, 400, "prompt", "empty"),
    ("/v1/completions", {"prompt": []}, 400, "prompt", "empty"),
    ("/v1/completions", {"prompt": [1, 99999]}, 400, "prompt", "not in the vocabulary"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens", "needs echo"),
    ("/v1/completions", {"prompt": "word " * 300}, 400, "prompt", "301 tokens; this model's context is 256"),
    ("/v1/completions", {"prompt": "x", "n": 100}, 400, "n", "less than or equal"),
])
def test_what_the_server_cannot_do_is_a_400_that_names_the_field(server, route, body, status, param, message):
    url, _ = server
    response = requests.post(url + route, json=body, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and message in error["message"]


def test_unknown_routes_and_methods_answer_in_openais_error_shape(server):
    url, _ = server
    missing = requests.get(f"{url}/v1/nothing")
    wrong = requests.get(f"{url}/v1/chat/completions")
    assert missing.status_code == 404 and "no route /v1/nothing" in missing.json()["error"]["message"]
    assert wrong.status_code == 405 and "GET is not allowed" in wrong.json()["error"]["message"]


def test_text_that_is_not_valid_unicode_is_answered_not_a_server_error(server):
    url, _ = server
    body = '{"prompt": "broken \\ud800 surrogate", "max_tokens": 2}'
    response = requests.post(f"{url}/v1/completions", data=body, headers={"Content-Type": "application/json"})
    assert response.status_code in (200, 400), response.text


def test_an_api_key_guards_every_v1_route_and_leaves_health_open(keyed_server):
    url = keyed_server
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    assert requests.get(f"{url}/health").ok and requests.get(f"{url}/metrics").ok
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        for method, route in (("post", "/v1/chat/completions"), ("get", "/v1/models"), ("post", "/tokenize")):
            response = getattr(requests, method)(url + route, json=chat, headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["type"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        client(url, "wrong").models.list()
    assert client(url, KEY).chat.completions.create(model="tiny", **chat).usage.completion_tokens <= 2


def test_a_body_over_the_limit_is_a_413_sent_whole_or_in_chunks(keyed_server):
    url = keyed_server
    big = json.dumps({"prompt": "x" * 20_000}).encode()
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    assert requests.post(f"{url}/v1/completions", data=big, headers=headers).status_code == 413
    chunked = requests.post(f"{url}/v1/completions", data=iter([big[:5000], big[5000:]]), headers=headers)
    assert chunked.status_code == 413 and "10000" in chunked.json()["error"]["message"]
    small = json.dumps({"prompt": "Hello", "max_tokens": 2}).encode()
    assert requests.post(f"{url}/v1/completions", data=iter([small[:5], small[5:]]), headers=headers).ok
    assert requests.get(f"{url}/health").ok


def test_logit_bias_and_min_tokens_shape_the_answer(server):
    url, _ = server
    api = client(url)
    forced = api.completions.create(model="tiny", prompt="Hello", max_tokens=4, temperature=0,
                                    logit_bias={"318": 100})
    assert forced.choices[0].text == decode([318] * 4)
    at_least = api.completions.create(model="tiny", prompt="Hello", max_tokens=10, temperature=0,
                                      logit_bias={"50256": 100}, extra_body={"min_tokens": 3})
    assert at_least.usage.completion_tokens == 3 and at_least.choices[0].finish_reason == "stop"


SHIRT = {"type": "object", "additionalProperties": False, "required": ["color", "size"],
         "properties": {"color": {"enum": ["red", "green", "blue"]}, "size": {"enum": ["S", "M", "L"]}}}


def test_an_untrained_model_answers_json_of_the_schema_beside_free_rows_of_its_batch(server):
    url, _ = server
    api = client(url)
    form = {"type": "json_schema", "json_schema": {"name": "shirt", "schema": SHIRT, "strict": True}}
    ask = dict(model="tiny", messages=[{"role": "user", "content": "Describe a shirt."}], max_tokens=64)
    with ThreadPoolExecutor(4) as pool:
        free = [pool.submit(api.chat.completions.create, **ask, temperature=0) for _ in range(2)]
        constrained = pool.submit(api.chat.completions.create, **ask, temperature=1.0, seed=3, n=3,
                                  response_format=form)
        objects = pool.submit(api.chat.completions.create, **ask, temperature=0,
                              response_format={"type": "json_object"})
        free_answers = [f.result().choices[0].message.content for f in free]
        shirts = [json.loads(c.message.content) for c in constrained.result().choices]
        anything = objects.result().choices[0]
    for shirt in shirts:
        assert set(shirt) == {"color", "size"} and shirt["color"] in ("red", "green", "blue") \
            and shirt["size"] in ("S", "M", "L")
    # any object: an untrained model's strings can run past 64 tokens, but what comes is an object's start
    assert anything.message.content.startswith('{"')
    assert anything.finish_reason == "length" or isinstance(json.loads(anything.message.content), dict)
    alone = api.chat.completions.create(**ask, temperature=0).choices[0].message.content
    assert free_answers == [alone, alone]  # constrained neighbours change nothing of a free row


@pytest.mark.slow
def test_64_clients_mixing_every_kind_of_request_get_whole_uncrossed_answers_while_health_answers(server):
    url, _ = server
    form = {"type": "json_schema", "json_schema": {"name": "shirt", "schema": SHIRT}}

    def chat(i, **extra):
        return requests.post(f"{url}/v1/chat/completions", timeout=300, json={
            "messages": [{"role": "user", "content": f"Count to {i}."}], "max_tokens": 12, **extra})

    def one(i):
        kind = ("greedy", "sampled", "constrained", "streamed", "cancelled")[i % 5]
        if kind == "greedy":
            return kind, i, chat(i, temperature=0).json()["choices"][0]["message"]["content"]
        if kind == "sampled":
            return kind, i, chat(i, temperature=1.0, seed=i).json()["choices"][0]["finish_reason"]
        if kind == "constrained":
            return kind, i, json.loads(chat(i, temperature=1.0, response_format=form, max_tokens=64)
                                       .json()["choices"][0]["message"]["content"])
        with requests.post(f"{url}/v1/chat/completions", stream=True, timeout=300,
                json={"messages": [{"role": "user", "content": f"Count to {i}."}], "max_tokens": 12,
                      "temperature": 0, "stream": True}) as response:
            lines = [line for line in response.iter_lines() if line]
            if kind == "cancelled":
                return kind, i, lines[0].startswith(b"data: ")  # leaves after the first event
            return kind, i, lines[-1] == b"data: [DONE]"

    health, stop = [], threading.Event()

    def poll():
        while not stop.is_set():
            start = time.perf_counter()
            assert requests.get(f"{url}/health", timeout=10).ok
            health.append(time.perf_counter() - start)
            time.sleep(0.05)

    poller = threading.Thread(target=poll)
    poller.start()
    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(one, range(64)))
    stop.set()
    poller.join()
    for kind, i, value in results:
        if kind == "greedy":
            alone = chat(i, temperature=0).json()["choices"][0]["message"]["content"]
            assert value == alone, i
        elif kind == "constrained":
            assert set(value) == {"color", "size"}
        elif kind == "sampled":
            assert value in ("stop", "length")
        else:
            assert value is True
    assert len(results) == 64 and max(health) < 2.0


@pytest.fixture(scope="module")
def long_answer_server():
    """A model whose answers run for seconds (a context of 1024, up to 900 new tokens)."""
    import torch

    from gpt2_lightning.model.gpt import GPTConfig, GPTModel

    torch.manual_seed(0)
    model = GPTModel(GPTConfig(vocab_size=50257, context_length=1024, emb_dim=128, n_layers=4, n_heads=4)).eval()
    with serving(create_app(model, get_style("alpaca"), name="tiny", default_max_tokens=900)) as url:
        yield url


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromedriver") is None, reason="Debian's chromium-driver is not installed")
def test_the_pages_stop_button_keeps_the_answer_so_far_and_an_empty_answer_leaves_the_chat_working(
        long_answer_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with headless_chromium() as driver:
        driver.get(long_answer_server + "/")
        wait = WebDriverWait(driver, 120)
        # an earlier turn whose answer was empty, as a model can give one
        driver.execute_script("messages.push({role: 'user', content: 'Hi'}, {role: 'assistant', content: ''});")
        driver.find_element(By.ID, "input").send_keys("Tell me a long story.\n")
        wait.until(lambda d: len(d.find_element(By.CSS_SELECTOR, ".msg.assistant").text) > 20)
        assert not driver.find_element(By.ID, "send").is_displayed()
        driver.find_element(By.ID, "stop").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-state='done']"))
        stopped = driver.find_element(By.CSS_SELECTOR, ".msg.assistant").text
        assert driver.find_element(By.ID, "send").is_displayed() and not driver.find_element(By.ID, "stop").is_displayed()
        history = driver.execute_script("return messages;")
        assert history[-1] == {"role": "assistant", "content": stopped} and len(history) == 4
        time.sleep(0.5)
        assert driver.find_element(By.CSS_SELECTOR, ".msg.assistant").text == stopped  # nothing more arrives
        deadline = time.time() + 10  # the stopped answer's row is freed at the engine's next step
        while requests.get(f"{long_answer_server}/health", timeout=10).json()["running"] and time.time() < deadline:
            time.sleep(0.05)
        assert requests.get(f"{long_answer_server}/health", timeout=10).json()["running"] == 0
        driver.find_element(By.ID, "input").send_keys("And another?\n")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant:nth-of-type(4)") or
                   d.find_elements(By.CSS_SELECTOR, ".msg.error"))
        second = driver.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1]
        driver.find_element(By.ID, "stop").click()
        wait.until(lambda d: second.get_attribute("data-state") == "done")
        assert "error" not in second.get_attribute("class")
