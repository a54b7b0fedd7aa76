"""A bounded load run against the OpenAI-compatible server on 127.0.0.1 (a random model of the
chosen shape, run as ``gpt2 serve`` runs it): the same N requests sent one after another,
then from C concurrent clients; generated tokens/s of both, latency percentiles, and the
latency of ``/health`` polled during the concurrent phase. Stops after --max-seconds a phase.

    python bench/serve_load.py [--model tiny|gpt2-small] [--requests 16] [--concurrency 8] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import torch
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

from gpt2_lightning.apps.serve import create_app  # noqa: E402
from gpt2_lightning.data.prompts import get_style  # noqa: E402
from gpt2_lightning.generation.placement import placed_for_generation  # noqa: E402
from gpt2_lightning.model.gpt import GPTConfig, GPTModel  # noqa: E402

SHAPES = {"tiny": GPTConfig(vocab_size=50257, context_length=256, emb_dim=64, n_layers=2, n_heads=4),
          "gpt2-small": GPTConfig.from_name("gpt2-small")}


def load(url: str, requests_: int, concurrency: int, max_tokens: int, max_seconds: float) -> dict:
    """Send ``requests_`` chat requests from ``concurrency`` clients; what came back."""
    deadline = time.perf_counter() + max_seconds
    latencies: list[float] = []
    tokens, failures = 0, 0

    def one(i: int) -> None:
        nonlocal tokens, failures
        if time.perf_counter() > deadline:
            return
        start = time.perf_counter()
        response = requests.post(f"{url}/v1/chat/completions", timeout=max_seconds, json={
            "messages": [{"role": "user", "content": f"Give me fact number {i}."}],
            "max_tokens": max_tokens, "temperature": 0.7, "seed": i})
        if response.ok:
            latencies.append(time.perf_counter() - start)
            tokens += response.json()["usage"]["completion_tokens"]
        else:
            failures += 1

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests_)))
    elapsed = time.perf_counter() - start
    return {"latencies": latencies, "tokens": tokens, "failures": failures, "elapsed": elapsed}


def percentiles(values: list[float]) -> str:
    q = statistics.quantiles(values, n=100) if len(values) > 1 else [values[0]] * 99
    return f"p50 {q[49] * 1000:.0f} ms, p99 {q[98] * 1000:.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=SHAPES, default="gpt2-small")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-seconds", type=float, default=300)
    args = parser.parse_args()
    print(machine())
    torch.manual_seed(0)
    model = placed_for_generation(GPTModel(SHAPES[args.model]), device="cpu")  # as gpt2 serve runs it
    app = create_app(model, get_style("alpaca"), name=args.model, max_batch_size=args.concurrency)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    while not server.started:
        time.sleep(0.05)

    results = {}
    health: list[float] = []
    for clients in (1, args.concurrency):
        polling = threading.Event()

        def poll_health() -> None:
            while not polling.is_set():
                start = time.perf_counter()
                requests.get(f"{url}/health", timeout=30)
                health.append(time.perf_counter() - start)
                time.sleep(0.1)

        poller = threading.Thread(target=poll_health, daemon=True)
        if clients > 1:
            poller.start()
        results[clients] = run = load(url, args.requests, clients, args.max_tokens, args.max_seconds)
        polling.set()
        print(f"{args.model}, {clients} client(s): {len(run['latencies'])} answered, {run['failures']} failed, "
              f"{run['tokens']} tokens in {run['elapsed']:.1f} s = {run['tokens'] / run['elapsed']:.1f} tokens/s, "
              f"{len(run['latencies']) / run['elapsed']:.2f} requests/s; latency {percentiles(run['latencies'])}")
    server.should_exit = True
    one, many = (results[c] for c in (1, args.concurrency))
    speedup = (many["tokens"] / many["elapsed"]) / (one["tokens"] / one["elapsed"])
    print(f"-> {args.concurrency} concurrent clients: {speedup:.2f}x "
          f"the tokens/s of one after another; /health under load: {percentiles(health)} ({len(health)} polls)")


if __name__ == "__main__":
    main()
