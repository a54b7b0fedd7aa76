"""Serve a model over an OpenAI-compatible HTTP API, with a web chat page.

POST /v1/chat/completions and POST /v1/completions (with "stream": true as server-sent
events; log-probabilities, echo, n choices, prompts as token ids), GET /v1/models,
POST /tokenize and /detokenize, GET /health, GET /metrics (Prometheus) and the chat page at /.
With --api-key, every /v1 route and the token routes need "Authorization: Bearer <key>".
Requests decode together (continuous batching): each joins the running batch at the next
step and leaves it when done; when --max-queue requests wait already, a 429 says when to
retry. A client that disconnects stops its generation.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

from gpt2_lightning.apps.inference import add_model_arguments, model_for_generation
from gpt2_lightning.apps.serve.app import MAX_REQUEST_BYTES, create_app
from gpt2_lightning.export.run import Run
from gpt2_lightning.generation.prefix_cache import DEFAULT_MEGABYTES

__all__ = ["add_arguments", "create_app", "run", "served_name"]

API_KEY_VARIABLE = "GPT2_LIGHTNING_API_KEY"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--model-name", "--name", dest="name", help="the model id in the API (default: a run's "
                        "experiment and model, e.g. quickstart-gpt2-small; else the folder or file name)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; 0.0.0.0 exposes the server to the network (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=256,
                        help="answer length when a request does not say (its max_tokens; default: %(default)s)")
    parser.add_argument("--max-batch-size", type=int, default=8,
                        help="requests decoded together; more wait in the queue (default: %(default)s)")
    parser.add_argument("--max-queue", type=int, default=64,
                        help="requests waiting for a row; beyond, 429 with Retry-After (default: %(default)s)")
    parser.add_argument("--request-timeout", type=float, default=600.0,
                        help="seconds a request may generate; then its answer ends as it is (default: %(default)s)")
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_VARIABLE),
                        help=f"clients must send 'Authorization: Bearer KEY' (default: ${API_KEY_VARIABLE}; none: open)")
    parser.add_argument("--max-request-bytes", type=int, default=MAX_REQUEST_BYTES,
                        help="a larger request body is refused with 413 (default: %(default)s)")
    parser.add_argument("--allowed-origins", nargs="+", metavar="ORIGIN",
                        help="web origins whose pages may call the API (CORS; default: none)")
    parser.add_argument("--prefix-cache-mb", type=float, default=DEFAULT_MEGABYTES,
                        help="memory for the keys and values of recent conversations: a next turn prefills only "
                        "what follows its history (0: none; default: %(default)s)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                        help="the server's log (default: %(default)s)")


def served_name(spec: str) -> str:
    """A model id that says what is served: for a run (its directory, export or checkpoint) its
    experiment and model (``quickstart-gpt2-small``), else the folder or file name."""
    path = Path(spec).resolve()
    if not path.exists():  # a size name or a URL
        return spec
    run = Run.of(path)
    if run is not None:
        return run.name
    return (path.stem if path.suffix else path.name) or "gpt2-lightning"


def run(args: argparse.Namespace) -> None:
    import uvicorn

    model, style = model_for_generation(args)
    name = args.name or served_name(args.model)
    if not args.api_key and not is_loopback(args.host):
        print(f"warning: serving on {args.host} without an API key: anyone who reaches it can use it "
              f"(give --api-key or set {API_KEY_VARIABLE})", file=sys.stderr, flush=True)
    app = create_app(model, style, name, args.max_new_tokens, args.max_batch_size, args.max_queue,
                     args.request_timeout, args.api_key, args.max_request_bytes, args.allowed_origins,
                     args.prefix_cache_mb)
    print(f"serving {name} ({style.name} prompts) on http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
