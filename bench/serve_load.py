"""A bounded load run against the OpenAI-compatible server on 127.0.0.1: N requests from C
concurrent clients (stops after --max-seconds at the latest); requests/s and latency
percentiles. Starts its own server over a random model of the chosen shape.

    python bench/serve_load.py [--model tiny|gpt2-small] [--requests 100] [--concurrency 8] [--max-tokens 16]
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
from gpt2_lightning.devices import for_inference  # noqa: E402
from gpt2_lightning.model.gpt import GPTConfig, GPTModel  # noqa: E402

SHAPES = {"tiny": GPTConfig(vocab_size=50257, context_length=256, emb_dim=64, n_layers=2, n_heads=4),
          "gpt2-small": GPTConfig.from_name("gpt2-small")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=SHAPES, default="tiny")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=120)
    args = parser.parse_args()
    print(machine())
    torch.manual_seed(0)
    model = for_inference(GPTModel(SHAPES[args.model]), "cpu")  # as gpt2 serve runs it
    app = create_app(model, get_style("alpaca"), name=args.model)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    while not server.started:
        time.sleep(0.05)

    deadline = time.perf_counter() + args.max_seconds
    latencies: list[float] = []
    failures = 0

    def one(i: int) -> None:
        nonlocal failures
        if time.perf_counter() > deadline:
            return
        start = time.perf_counter()
        response = requests.post(f"{url}/v1/chat/completions", timeout=args.max_seconds, json={
            "messages": [{"role": "user", "content": f"Give me fact number {i}."}],
            "max_tokens": args.max_tokens, "temperature": 0.7, "seed": i})
        if response.ok:
            latencies.append(time.perf_counter() - start)
        else:
            failures += 1

    start = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        list(pool.map(one, range(args.requests)))
    elapsed = time.perf_counter() - start
    server.should_exit = True
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [latencies[0]] * 99
    print(f"{args.model}: {len(latencies)} answered, {failures} failed, {args.concurrency} concurrent, "
          f"<= {args.max_tokens} tokens each, in {elapsed:.1f} s")
    print(f"{len(latencies) / elapsed:.1f} requests/s; latency p50 {q[49] * 1000:.0f} ms, "
          f"p90 {q[89] * 1000:.0f} ms, p99 {q[98] * 1000:.0f} ms")


if __name__ == "__main__":
    main()
