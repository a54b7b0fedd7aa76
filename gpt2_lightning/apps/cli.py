"""The ``gpt2`` command: ``gpt2 VERB ...``, one verb per job.

``gpt2 train`` takes Hydra overrides, exactly as ``python train.py`` does; every other verb
takes ordinary options, documented by ``gpt2 VERB --help``. Only the chosen verb's module is
imported, so that ``gpt2 chat`` does not wait for Lightning.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from gpt2_lightning import __version__
from gpt2_lightning.apps.common import collector_paused, exit_on_user_error, exit_without_teardown

# verb -> (module under gpt2_lightning.apps, one-line summary)
VERBS = {
    "train": ("train", "fine-tune, then test, export, answer the test split, score and plot "
                       "(Hydra overrides: gpt2 train --help)"),
    "chat": ("chat", "talk to a model in the terminal, or answer one --prompt"),
    "respond": ("respond", "answer a run's test split or your instructions into JSON"),
    "eval": ("evaluate", "score a responses.json (exact match, ROUGE-L, optional LLM judge), or run "
             "lm-evaluation-harness benchmarks (--tasks)"),
    "plot": ("plot", "draw a run's losses into loss.png"),
    "report": ("report", "write a run's report.html again: settings, losses, scores, every answer"),
    "serve": ("serve", "OpenAI-compatible HTTP API and web chat page"),
    "export": ("export", "write a model for Hugging Face transformers, llama.cpp (GGUF) or Ollama"),
    "compare": ("compare", "rank runs (or a sweep's runs) by val loss, test loss, ROUGE-L, judge, training time"),
    "prefs": ("prefs", "make DPO preferences from SFT data: the reference answer chosen, the run's own rejected"),
}


def verbs_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpt2", description="Instruction-fine-tune GPT-2, then talk to it, score it and serve it.",
        epilog="gpt2 VERB --help documents each verb's options.")
    parser.add_argument("--version", action="version", version=f"gpt2-lightning {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, (_, summary) in VERBS.items():
        verbs.add_parser(verb, help=summary, add_help=False)
    return parser


def verb_parser(verb: str, module) -> argparse.ArgumentParser:
    summary, _, details = (module.__doc__ or "").strip().partition("\n\n")
    parser = argparse.ArgumentParser(prog=f"gpt2 {verb}", description=summary, epilog=details or None)
    module.add_arguments(parser)
    return parser


def command() -> NoReturn:
    """The ``gpt2`` program: ``main`` on the command line's arguments, as a process of its own."""
    exit_without_teardown(main)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``gpt2 ARGV``; return the exit code (user errors exit with 2 from inside)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in VERBS:
        verbs_parser().parse_args(argv)  # prints the help, the version or the error, and exits
    try:
        return run_verb(argv[0], argv[1:])
    except KeyboardInterrupt:  # Ctrl-C outside an answer (while importing or loading, say): leave quietly
        print(file=sys.stderr)
        return 130


def run_verb(verb: str, args: list[str]) -> int:
    with collector_paused():
        module = importlib.import_module(f"gpt2_lightning.apps.{VERBS[verb][0]}")
    if verb == "train":
        sys.argv[0] = f"{sys.argv[0]} train"
        module.main(args)
        return 0
    options = verb_parser(verb, module).parse_args(args)
    with exit_on_user_error():
        return module.run(options) or 0
